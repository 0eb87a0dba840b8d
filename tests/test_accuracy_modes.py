"""Tests of the accuracy benchmark's tasks and protocols and of the fidelity
diagnostic (tools/analysis/accuracy_bench.py, tools/analysis/fidelity.py),
at tiny size."""
import json
import math
from pathlib import Path

import pytest
import torch
from mmengine.config import Config
from mmengine.registry import init_default_scope

import mmseg_didb  # noqa: F401
from mmseg_didb.analysis import build_segmentor, load_config
from mmseg_didb.analysis.accuracy import (TASKS, two_stage_options,
                                          variant_options)
from mmseg_didb.analysis.binary_ops import binary_input, binary_weight
from mmseg_didb.analysis.fidelity import (attention_kl,
                                          build_from_fp_checkpoint,
                                          compare_records, record_blocks,
                                          relative_error, row_cosine)

torch.set_num_threads(1)
init_default_scope('mmseg')
ROOT = Path(__file__).resolve().parents[1]
VIT = str(ROOT / TASKS['vit'][0])
SWIN = str(ROOT / TASKS['swin'][0])
W = 24
#: the ViT task at tiny size (4 blocks of width 24), batches of 4
TINY_VIT = {
    'model.backbone.embed_dims': W, 'model.backbone.num_layers': 4,
    'model.backbone.out_indices': (0, 1, 2, 3),
    'model.neck.in_channels': [W] * 4, 'model.neck.out_channels': W,
    'model.decode_head.in_channels': [W] * 4,
    'model.decode_head.channels': 8,
    'train_dataloader.batch_size': 4,
}
TINY_SWIN = {
    'model.backbone.embed_dims': 16, 'model.backbone.num_heads': (1, 1, 2, 2),
    'model.decode_head.in_channels': [16, 32, 64, 128],
    'model.decode_head.channels': 8,
}


def _cli(options: dict) -> list:
    def fmt(v):
        return '[' + ','.join(map(str, v)) + ']' if isinstance(
            v, (list, tuple)) else str(v)
    return ['--cfg-options'] + [f'{k}={fmt(v)}' for k, v in options.items()]


# ------------------------------------------------------------ the variants
def test_variants_set_the_neck_of_the_vit_task():
    """``fp`` is FP throughout on the ViT task, binary neck included; a
    baseline's neck is the baseline's; the Swin task (no neck) is as before.
    """
    cfg = load_config(VIT, variant_options('fp', VIT))
    cfg.merge_from_dict(TINY_VIT)
    model = build_segmentor(cfg)
    binary = [n for n, m in model.named_modules()
              if binary_weight(m) or binary_input(m)]
    assert binary == []
    # the old options (backbone and head only) left the neck binary
    cfg = load_config(VIT, variant_options('fp'))
    cfg.merge_from_dict(TINY_VIT)
    old = build_segmentor(cfg)
    assert any(binary_input(m) for m in old.neck.modules())
    opts = variant_options('react', VIT)
    assert opts['model.neck.preset'] == 'react'
    assert variant_options('didb_fp_head', VIT)['model.neck.preset'] == 'fp'
    assert 'model.neck.preset' not in variant_options('react', SWIN)
    assert 'model.neck.preset' not in variant_options('react')
    with pytest.raises(ValueError, match='valid'):
        variant_options('nope', VIT)


def test_tasks_build_the_documented_models():
    vit = build_segmentor(load_config(VIT))
    assert type(vit.backbone).__name__ == 'DIDBViT'
    assert vit.backbone.grid.size == (16, 16)  # 256 tokens, global attention
    assert len(vit.backbone.layers) == 6 and vit.backbone.num_heads == 3
    feats = vit.extract_feat(torch.zeros(1, 3, 64, 64))
    assert [f.shape[-1] for f in feats] == [16, 8, 4, 2]  # strides 4 to 32
    w8 = build_segmentor(load_config(str(ROOT / TASKS['swin_w8'][0])))
    assert [len(s.blocks) for s in w8.backbone.layers] == [2, 2, 2, 2]
    rec = record_blocks(w8, torch.zeros(1, 3, 64, 64))
    # stage 1: 16x16 tokens in four 8x8 windows of 64 keys
    assert next(iter(rec.values()))['probs'].shape == (4, 1, 64, 64)


def test_two_stage_options():
    pre = '/ckpt/pretrain.pth'
    one = two_stage_options(VIT, 1, pre)
    two = two_stage_options(VIT, 2, pre)
    # the plain protocol's 800 iterations in two halves, each warmed up
    assert one['train_cfg.max_iters'] == two['train_cfg.max_iters'] == 400
    assert one['param_scheduler'][0]['end'] == 40
    assert one['model.type'] == two['model.type'] == 'DistillEncoderDecoder'
    assert one['model.binarize'] == dict(weights=False)
    assert two['model.binarize'] is None
    assert two['optim_wrapper.optimizer.weight_decay'] == 0.0
    assert 'optim_wrapper.optimizer.weight_decay' not in one
    # stage 1 saves the checkpoint stage 2 starts from
    assert 'default_hooks.checkpoint' in one
    assert 'default_hooks.checkpoint' not in two
    # the teacher is the FP model of the task, neck included
    teacher = one['model.teacher_config']
    assert one['model.teacher_checkpoint'] == pre
    assert {teacher['backbone']['preset'], teacher['neck']['preset'],
            teacher['decode_head']['preset']} == {'fp'}
    assert teacher['backbone']['type'] == 'DIDBViT'
    odd = two_stage_options(VIT, 2, pre, {'train_cfg.max_iters': 5})
    assert odd['train_cfg.max_iters'] == 3
    with pytest.raises(ValueError, match='stage'):
        two_stage_options(VIT, 3, pre)


def test_two_stage_student_builds_and_distils():
    """The options make a student that trains with loss_kd against the FP
    teacher (the run's overrides reach it) and, in stage 1, keeps FP
    weights while its activations are binary."""
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample

    from mmseg_didb.binary.layers import BinaryLinear
    cfg = load_config(VIT, TINY_VIT)
    cfg.merge_from_dict(variant_options('didb', VIT))
    cfg.merge_from_dict(two_stage_options(VIT, 1, 'x.pth', TINY_VIT))
    assert cfg.model.teacher_config['backbone']['embed_dims'] == W
    cfg.model.teacher_checkpoint = None
    cfg.model.allow_random_teacher = True
    from mmengine.model import revert_sync_batchnorm
    from mmseg.registry import MODELS
    student = revert_sync_batchnorm(MODELS.build(cfg.model))
    assert type(student).__name__ == 'DistillEncoderDecoder'
    lin = next(m for m in student.backbone.modules()
               if isinstance(m, BinaryLinear))
    assert not lin.weight_quantizer.enabled and lin.input_quantizer.enabled
    samples = []
    for _ in range(2):
        s = SegDataSample()
        s.gt_sem_seg = PixelData(data=torch.randint(0, 8, (1, 64, 64)))
        s.set_metainfo(dict(img_shape=(64, 64), pad_shape=(64, 64)))
        samples.append(s)
    with pytest.warns(UserWarning, match='RANDOM'):
        losses = student.loss(torch.randn(2, 3, 64, 64), samples)
    assert losses['loss_kd'] > 0


# ------------------------------------------------------ fidelity, the math
def test_attention_kl_and_cosine_values():
    p = torch.tensor([[0.5, 0.5, 0.0], [0.2, 0.3, 0.5]])
    q = torch.tensor([[0.25, 0.75, 0.0], [0.2, 0.3, 0.5]])
    want = (0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)) / 2
    assert attention_kl(p, q) == pytest.approx(want, rel=1e-9)
    assert attention_kl(q, q) == pytest.approx(0.0, abs=1e-12)
    a = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    b = torch.tensor([[0.0, 2.0], [3.0, 3.0]])
    assert row_cosine(a, b) == pytest.approx(0.5)
    assert row_cosine(a, 7 * a) == pytest.approx(1.0)
    x = torch.tensor([3.0, 4.0])
    assert relative_error(x + torch.tensor([0.0, 1.0]), x) == \
        pytest.approx(0.2)


def _tiny_model(config, tiny, variant):
    cfg = load_config(config, variant_options(variant, config))
    cfg.merge_from_dict(tiny)
    torch.manual_seed(0)
    return build_segmentor(cfg).eval()


@pytest.mark.parametrize('config,tiny', [(VIT, TINY_VIT), (SWIN, TINY_SWIN)],
                         ids=['vit', 'swin'])
def test_records_every_block(config, tiny):
    model = _tiny_model(config, tiny, 'didb')
    x = torch.randn(2, 3, 64, 64)
    rec = record_blocks(model, x)
    nblocks = 4 if config == VIT else 4  # 4 ViT layers / 4 Swin stages of 1
    assert len(rec) == nblocks
    first = next(iter(rec.values()))
    if config == VIT:
        # global attention: every query over the 256 tokens and the CLS
        assert first['probs'].shape == (2, 3, 257, 257)
        assert first['out'].shape == (2, 257, W)
    else:
        assert first['probs'].shape[-1] == 16  # 4x4 windows
    # the binarized map takes two values per row at most: {0, a}
    levels = first['attn'][0, 0, 0].unique()
    assert len(levels) <= 2 and levels.min() == 0
    # hooks are removed again
    assert all(not b._forward_hooks for b in model.modules()
               if type(b).__name__ == 'DIDBBlock')
    same = compare_records(rec, record_blocks(model, x))
    assert all(b.attn_kl == pytest.approx(0, abs=1e-9) and
               b.out_cos == pytest.approx(1) and b.out_rel == 0
               for b in same)


def test_fp_checkpoint_into_variants(tmp_path):
    fp = _tiny_model(VIT, TINY_VIT, 'fp')
    ckpt = tmp_path / 'fp.pth'
    torch.save(dict(state_dict=fp.state_dict(), meta={}), ckpt)
    opts = dict(TINY_VIT, **variant_options('didb', VIT))
    didb = build_from_fp_checkpoint(VIT, opts, str(ckpt))
    # shared weights are the FP model's
    assert torch.equal(didb.backbone.pos_embed, fp.backbone.pos_embed)
    name = 'backbone.layers.0.attn.v.linear.weight'
    fp_state = fp.state_dict()
    if name in fp_state:
        assert torch.equal(didb.state_dict()[name], fp_state[name])
    x = torch.randn(2, 3, 64, 64)
    ref = record_blocks(build_from_fp_checkpoint(
        VIT, dict(TINY_VIT, **variant_options('fp', VIT)), str(ckpt)), x)
    assert compare_records(ref, record_blocks(fp, x))[0].out_rel == 0
    got = compare_records(ref, record_blocks(didb, x))
    assert all(0 < b.out_rel and b.attn_cos < 1 for b in got)
    # a checkpoint with weights the model lacks is refused, saying which
    # to give; one of another backbone is refused by the backbone
    bad = tmp_path / 'extra.pth'
    torch.save(dict(state_dict=dict(fp.state_dict(), **{
        'decode_head.extra.weight': torch.zeros(1)})), bad)
    with pytest.raises(ValueError, match='stage-0 checkpoint'):
        build_from_fp_checkpoint(VIT, opts, str(bad))
    other = _tiny_model(SWIN, TINY_SWIN, 'fp')
    torch.save(dict(state_dict=other.state_dict()), bad)
    with pytest.raises(ValueError, match='checkpoint'):
        build_from_fp_checkpoint(VIT, opts, str(bad))


def test_hfsc_from_fp_weights_moves_the_attention(tmp_path):
    """``fp_hfsc`` (the diagnostic of docs/results.md): HFSC's units start
    from the FP model's Q and K (Q_L = Q_H = Q), yet without binarization
    its attention is not the FP model's, because the two-band similarity
    has no cross-band terms; removing HFSC restores it exactly."""
    fp = _tiny_model(VIT, TINY_VIT, 'fp')
    ckpt = tmp_path / 'fp.pth'
    torch.save(dict(state_dict=fp.state_dict()), ckpt)
    hfsc = build_from_fp_checkpoint(
        VIT, dict(TINY_VIT, **variant_options('fp_hfsc', VIT)), str(ckpt))
    sim = 'backbone.layers.0.attn.similarity.'
    for unit in ('q', 'k'):
        for band in ('low', 'high'):
            assert torch.equal(
                hfsc.state_dict()[f'{sim}{unit}_{band}.linear.weight'],
                fp.state_dict()[f'{sim}{unit}.linear.weight'])
    x = torch.randn(2, 3, 64, 64)
    ref = record_blocks(fp, x)
    got = compare_records(ref, record_blocks(hfsc, x))
    assert all(b.attn_kl > 1e-3 and b.out_rel > 1e-3 for b in got)
    opts = dict(TINY_VIT, **variant_options('fp_hfsc', VIT))
    opts['model.backbone.preset_overrides'] = dict(hfsc=False)
    same = build_from_fp_checkpoint(VIT, opts, str(ckpt))
    assert all(b.attn_kl < 1e-9 and b.out_rel < 1e-6 for b in
               compare_records(ref, record_blocks(same, x)))


# ------------------------------------------------ the tools, end to end
@pytest.fixture(scope='module')
def bench_dir(tmp_path_factory, run_tool):
    """The ViT task's stage 0 at tiny size (2 iterations) on the benchmark
    data, as ``accuracy_bench.py --stage0-only`` makes it."""
    work = tmp_path_factory.mktemp('accuracy_vit')
    data = tmp_path_factory.mktemp('bench_data')
    args = ['tools/analysis/accuracy_bench.py', '--task', 'vit',
            '--work-dir', work, '--data-dir', data]
    # the same overrides for every run (they are part of each fingerprint)
    opts = dict(TINY_VIT, pretrain_iters=2, **{
        'train_cfg.max_iters': 4, 'default_hooks.logger.interval': 1})
    out = run_tool(args + ['--stage0-only'] + _cli(opts)).stdout
    pre = json.loads((work / 'pretrain.json').read_text())
    assert f"stage 0 checkpoint: {pre['checkpoint']}" in out
    return work, data, args, opts, pre


def test_two_stage_protocol_end_to_end(bench_dir, run_tool):
    work, data, args, opts, pre = bench_dir
    cmd = args + ['--protocol', 'two-stage', '--variants', 'didb', '--seeds',
                  '0'] + _cli(opts)
    out = run_tool(cmd).stdout
    assert 'stage 0: FP' not in out  # reused
    first = json.loads(
        (work / 'runs_two_stage' / 'stage1' / 'didb_s0.json').read_text())
    second = json.loads(
        (work / 'runs_two_stage' / 'didb_s0.json').read_text())
    o1, o2 = first['options'], second['options']
    assert o1['model.binarize'] == dict(weights=False)
    assert o2['model.binarize'] is None
    assert o1['load_from'] == o1['model.teacher_checkpoint'] == \
        o2['model.teacher_checkpoint'] == pre['checkpoint']
    assert o2['load_from'] == first['checkpoint'] and \
        Path(first['checkpoint']).is_file()
    assert o1['train_cfg.max_iters'] == o2['train_cfg.max_iters'] == 2
    for stage in ('stage1', 'stage2'):
        log = (work / 'work' / 'two_stage' / stage / 'didb_s0' /
               'run.log').read_text()
        assert 'loss_kd' in log
    table = (work / 'results_two_stage.md').read_text()
    assert '`didb`' in table and 'two-stage' in table
    # a two-stage run costs both stages
    row, = json.loads((work / 'results_two_stage.json').read_text())
    assert row['time_s'] == pytest.approx(
        first['total_time_s'] + second['total_time_s'])
    assert (work / 'results_two_stage.png').is_file()
    assert not (work / 'runs').exists() or not list(
        (work / 'runs').glob('*.json'))
    # started again with the same settings, nothing runs
    again = run_tool(cmd).stdout
    assert 'runs to do' not in again and '`didb`' in again


def test_fidelity_tool_end_to_end(bench_dir, run_tool, tmp_path):
    work, data, _, opts, pre = bench_dir
    out = tmp_path / 'fid'
    tiny = {k: v for k, v in opts.items() if k.startswith('model.')}
    proc = run_tool(['tools/analysis/fidelity.py', VIT, pre['checkpoint'],
                     '--variants', 'react', 'didb', '--num-images', '4',
                     '--eval-images', '16', '--data-dir', data, '--out',
                     out] + _cli(tiny))
    rows = json.loads(out.with_suffix('.json').read_text())['variants']
    assert [r['variant'] for r in rows] == ['fp', 'react', 'didb']
    fp, react, didb = rows
    assert fp['attn_kl'] == pytest.approx(0, abs=1e-12)
    assert fp['attn_cos'] == pytest.approx(1) and fp['out_rel'] == 0
    for r in (react, didb):
        assert r['out_rel'] > 0 and r['attn_cos'] < 1
        assert len(r['blocks']) == 4
        assert 0 <= r['mIoU'] <= 100
    assert '| `didb` |' in proc.stdout and 'backbone.layers.3' in proc.stdout
    bad = run_tool(['tools/analysis/fidelity.py', VIT, tmp_path / 'no.pth'],
                   check=False)
    assert bad.returncode != 0 and '--stage0-only' in bad.stdout
