"""tools/gpu_check.sh: on a machine without a GPU it runs its CPU part,
says so and exits 0; its data options turn the ADE20K configs into runs on
the 512x512 mosaic folder."""
import argparse
import json
import subprocess
import sys

import pytest
import torch
from mmengine.config import DictAction
from mmengine.registry import init_default_scope

from conftest import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / 'tools'))
import gpu_check  # noqa: E402


@pytest.mark.skipif(torch.cuda.is_available(),
                    reason='checks the CPU-only behaviour')
def test_cpu_only_machine_runs_the_cpu_part_and_exits_0(tmp_path):
    out = tmp_path / 'check'
    proc = subprocess.run(
        ['bash', str(REPO_ROOT / 'tools' / 'gpu_check.sh'), '--out',
         str(out), '--num-train', '2', '--num-val', '1'],
        cwd=str(REPO_ROOT), stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert 'NO GPU PRESENT' in proc.stdout and 'passed' in proc.stdout
    report = json.loads((out / 'gpu_check.json').read_text())
    assert report['gpu'] is False
    assert report['data']['returncode'] == 0
    assert report['cpu_forward']['returncode'] == 0
    forward = (out / 'cpu_forward.log').read_text()
    # both models produced 150-class logits at 1/4 of 512x512
    assert forward.count('(1, 150, 128, 128)') == 2, forward
    assert len(list((out / 'ade_mosaic' / 'images' / 'training').glob(
        '*.png'))) == 2


@pytest.mark.parametrize('config', [gpu_check.BINARY, gpu_check.STOCK])
def test_data_options_point_the_ade20k_configs_at_the_mosaics(
        config, tmp_path):
    from mmseg.registry import DATASETS

    from mmseg_didb.analysis import load_config
    from mmseg_didb.datasets.texture_maker import MosaicSpec, build_dataset
    root = tmp_path / 'ade_mosaic'
    build_dataset(str(root), MosaicSpec(seed=0, size=64, num_train=3,
                                        num_val=2), verbose=False)
    # parsed as the training tool parses them
    parser = argparse.ArgumentParser()
    parser.add_argument('--cfg-options', nargs='+', action=DictAction)
    options = parser.parse_args(
        ['--cfg-options', *gpu_check.data_options(str(root), 30)])
    cfg = load_config(str(REPO_ROOT / config) if not config.startswith(
        'mmseg::') else config, options.cfg_options)
    assert cfg.train_cfg.max_iters == 30 and cfg.model.pretrained is None
    assert cfg.model.backbone.init_cfg is None  # nothing is downloaded
    init_default_scope('mmseg')
    for split, n in (('train', 3), ('val', 2)):
        dataset = DATASETS.build(cfg[f'{split}_dataloader'].dataset)
        assert len(dataset) == n
        sample = dataset[0]
        labels = sample['data_samples'].gt_sem_seg.data.unique()
        # ADE20K ids: 0 (other) is ignored (255) after reduce_zero_label
        assert set(labels.tolist()) <= set(range(150)) | {255}
