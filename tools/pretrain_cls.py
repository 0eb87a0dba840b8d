"""Classification pretraining of a (binary) timm model, ImageNet-format data.

The recipe of BinaryViT / ReActNet: AdamW, cosine learning-rate schedule and
knowledge distillation from a full-precision timm teacher (soft cross-entropy
to the teacher's softmax). Any timm model works as student or teacher; the
plugin's binary backbones are registered in timm by ``import mmseg_didb``
(``didb_swin_tiny_patch4_window7_224``, ``didb_deit_small_patch16_224``, ...).

Data: ``DATA/train/<class>/*`` (and optionally ``DATA/val/<class>/*``), or
class subfolders directly under ``DATA``.

Checkpoints (every epoch, and when ``--max-iters`` stops a run early) go to
``WORK_DIR/epoch_<n>.pth`` (model, optimizer, scheduler: resumable, and
loadable by timm as a teacher) and ``WORK_DIR/epoch_<n>_backbone.pth`` (the
backbone alone, keys without prefix) with ``latest.pth`` /
``latest_backbone.pth`` copies. A segmentation config uses the latter as
``backbone.init_cfg=dict(type='Pretrained', checkpoint=...)``.

Example (an FP teacher, then a binary DIDB Swin student distilled from it)::

    python tools/make_cls_folder.py data/texture_cls --size 64
    python tools/pretrain_cls.py data/texture_cls \
        --model vit_tiny_patch16_224 --img-size 64 \
        --model-kwargs '{"img_size": 64, "patch_size": 8}' \
        --epochs 30 --work-dir work_dirs/cls_fp_teacher
    python tools/pretrain_cls.py data/texture_cls \
        --model didb_swin_tiny_patch4_window7_224 --preset didb --img-size 64 \
        --teacher vit_tiny_patch16_224 \
        --teacher-kwargs '{"img_size": 64, "patch_size": 8}' \
        --teacher-checkpoint work_dirs/cls_fp_teacher/latest.pth \
        --epochs 30 --work-dir work_dirs/cls_didb_swin
"""
import argparse
import json
import math
import os
import os.path as osp
import sys
import time
import warnings
from typing import Dict, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

import timm  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402
from torchvision import datasets, transforms  # noqa: E402

import mmseg_didb  # noqa: E402,F401  registers the didb_* timm models
from mmseg_didb.compat import add_unsafe_load_argument  # noqa: E402
from mmseg_didb.binary import (GRSSchedule, grs_loss,  # noqa: E402
                               set_binarization)
from mmseg_didb.models.losses import pixel_kd_loss  # noqa: E402
from mmseg_didb.models.utils import (  # noqa: E402
    CheckpointMismatchError, load_whole_checkpoint, read_checkpoint)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Classification pretraining with KD from an FP teacher.')
    parser.add_argument('data', help='ImageNet-format folder')
    parser.add_argument('--model', required=True, help='timm model name')
    parser.add_argument(
        '--preset', default=None,
        help='binary preset of a didb_* model (fp, bnn, react, bit, '
        'binaryvit, didb); default: the model\'s own')
    parser.add_argument('--model-kwargs', default='{}',
                        help='JSON dict of extra timm.create_model kwargs')
    parser.add_argument('--teacher', default=None,
                        help='timm name of the FP teacher (enables KD)')
    parser.add_argument('--teacher-kwargs', default='{}',
                        help='JSON dict of the teacher\'s create_model kwargs')
    parser.add_argument('--teacher-checkpoint', default=None,
                        help='local teacher weights (no download happens)')
    parser.add_argument(
        '--allow-random-teacher', action='store_true',
        help='accept a teacher without checkpoint (tests only)')
    parser.add_argument('--kd-temperature', type=float, default=1.0)
    parser.add_argument(
        '--kd-alpha', type=float, default=1.0,
        help='loss = alpha * KD + (1 - alpha) * CE(labels); 1 = pure KD '
        '(BinaryViT)')
    parser.add_argument(
        '--init-checkpoint', default=None,
        help='start from these weights (e.g. stage 2 of two-step training '
        'from the --fp-weights stage-1 checkpoint); keys must all match')
    parser.add_argument('--fp-weights', action='store_true',
                        help='stage 1 of two-step training: binary '
                        'activations, FP weights')
    parser.add_argument('--grs-weight', type=float, default=0.0,
                        help='weight of the GRS regulariser (0 = off)')
    parser.add_argument('--grs-warmup-iters', type=int, default=0)
    parser.add_argument('--img-size', type=int, default=224)
    parser.add_argument('--no-aug', action='store_true',
                        help='resize + centre crop only (BinaryViT recipe)')
    parser.add_argument('--epochs', type=int, default=300)
    parser.add_argument('--max-iters', type=int, default=None,
                        help='stop after this many iterations')
    parser.add_argument('--batch-size', type=int, default=64)
    parser.add_argument('--lr', type=float, default=5e-4)
    parser.add_argument('--min-lr', type=float, default=0.0)
    parser.add_argument('--weight-decay', type=float, default=0.0)
    parser.add_argument('--warmup-iters', type=int, default=0)
    parser.add_argument('--label-smoothing', type=float, default=0.0)
    parser.add_argument('--work-dir', required=True)
    parser.add_argument('--resume', default=None, help='checkpoint to resume')
    add_unsafe_load_argument(parser, 'checkpoints')
    parser.add_argument('--device', default=None,
                        help='default: cuda if available, else cpu')
    parser.add_argument('--num-workers', type=int, default=2)
    parser.add_argument('--threads', type=int, default=None,
                        help='torch CPU threads')
    parser.add_argument('--log-interval', type=int, default=10)
    parser.add_argument('--no-progress', action='store_true',
                        help='periodic prints instead of a progress bar')
    parser.add_argument('--seed', type=int, default=0)
    return parser.parse_args(argv)


def _json(text: str, flag: str) -> Dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise SystemExit(f'{flag} must be a JSON dict: {err}')
    if not isinstance(value, dict):
        raise SystemExit(f'{flag} must be a JSON dict, got {text!r}')
    return value


def build_loaders(data: str, img_size: int, batch_size: int,
                  num_workers: int, no_aug: bool):
    train_root = osp.join(data, 'train')
    if not osp.isdir(train_root):
        train_root = data
    val_root = osp.join(data, 'val')
    normalize = transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)
    plain = transforms.Compose([
        transforms.Resize(img_size),
        transforms.CenterCrop(img_size),
        transforms.ToTensor(), normalize
    ])
    train_tf = plain if no_aug else transforms.Compose([
        transforms.RandomResizedCrop(img_size, scale=(0.35, 1.0)),
        transforms.RandomHorizontalFlip(),
        transforms.ToTensor(), normalize
    ])
    try:
        train_set = datasets.ImageFolder(train_root, train_tf)
    except (FileNotFoundError, RuntimeError) as err:
        raise SystemExit(
            f'No ImageNet-format data under {data}: expected '
            f'{data}/train/<class>/<image>. Build a small one with '
            f'tools/make_cls_folder.py. ({err})')
    train_loader = DataLoader(
        train_set, batch_size=batch_size, shuffle=True, drop_last=False,
        num_workers=num_workers, persistent_workers=num_workers > 0)
    val_loader = None
    if osp.isdir(val_root):
        val_set = datasets.ImageFolder(val_root, plain)
        if val_set.classes != train_set.classes:
            raise SystemExit('train/ and val/ must have the same classes.')
        val_loader = DataLoader(
            val_set, batch_size=batch_size, num_workers=num_workers)
    return train_set.classes, train_loader, val_loader


def load_weights(model: nn.Module, path: str,
                 allow_unsafe: bool = False) -> None:
    """Load a timm / own checkpoint, every key matched (weights-only
    unpickling unless ``allow_unsafe``)."""
    try:
        # an EMA copy, when saved, is the model to continue from
        load_whole_checkpoint(
            model, path, ('state_dict_ema', 'model_ema', 'state_dict',
                          'model'), allow_unsafe=allow_unsafe,
            hint='Give a local file (nothing is downloaded) made for this '
            'model name and its --*-kwargs.')
    except (FileNotFoundError, CheckpointMismatchError) as err:
        raise SystemExit(str(err)) from err


def build_teacher(args, num_classes: int) -> Optional[nn.Module]:
    if args.teacher is None:
        return None
    teacher = timm.create_model(
        args.teacher, pretrained=False, num_classes=num_classes,
        **_json(args.teacher_kwargs, '--teacher-kwargs'))
    if args.teacher_checkpoint:
        load_weights(teacher, args.teacher_checkpoint, args.unsafe_load)
    elif args.allow_random_teacher:
        msg = (f'teacher {args.teacher} has RANDOM weights (no '
               '--teacher-checkpoint): the KD target is meaningless.')
        warnings.warn(msg)
        print(f'WARNING: {msg}', flush=True)
    else:
        raise SystemExit(
            '--teacher needs --teacher-checkpoint (a local file; train an FP '
            'teacher with this script first). --allow-random-teacher accepts '
            'a random one, for tests only.')
    teacher.requires_grad_(False)
    return teacher.eval()


def param_groups(model: nn.Module, weight_decay: float):
    """No weight decay on 1-d parameters (norms, biases, scales)."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    return [dict(params=decay, weight_decay=weight_decay),
            dict(params=no_decay, weight_decay=0.0)]


def cosine_lambda(total: int, warmup: int, lr: float, min_lr: float):
    """Linear warmup, then cosine from ``lr`` to ``min_lr`` (per iteration)."""

    def fn(it: int) -> float:
        if it < warmup:
            return (it + 1) / warmup
        t = (it - warmup) / max(1, total - warmup)
        cos = 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))
        return (min_lr + (lr - min_lr) * cos) / lr

    return fn


def backbone_state(model: nn.Module) -> Optional[Dict[str, torch.Tensor]]:
    """State dict of ``model.backbone`` (the mmseg backbone), if any."""
    backbone = getattr(model, 'backbone', None)
    if not isinstance(backbone, nn.Module):
        return None
    return {k: v.detach().cpu() for k, v in backbone.state_dict().items()}


def save_checkpoint(work_dir: str, name: str, model, optimizer, scheduler,
                    epoch: int, it: int, meta: dict) -> str:
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    ckpt = dict(state_dict=state, optimizer=optimizer.state_dict(),
                scheduler=scheduler.state_dict(), epoch=epoch, iter=it,
                meta=meta)
    path = osp.join(work_dir, f'{name}.pth')
    torch.save(ckpt, path)
    torch.save(ckpt, osp.join(work_dir, 'latest.pth'))
    bb = backbone_state(model)
    if bb is not None:
        bb_ckpt = dict(state_dict=bb, meta=meta)
        torch.save(bb_ckpt, osp.join(work_dir, f'{name}_backbone.pth'))
        torch.save(bb_ckpt, osp.join(work_dir, 'latest_backbone.pth'))
    return path


@torch.no_grad()
def evaluate(model: nn.Module, loader, device) -> float:
    model.eval()
    correct = total = 0
    for images, labels in loader:
        logits = model(images.to(device))
        correct += (logits.argmax(1).cpu() == labels).sum().item()
        total += labels.numel()
    model.train()
    return 100.0 * correct / max(total, 1)


def main(argv=None) -> str:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    device = torch.device(args.device or (
        'cuda' if torch.cuda.is_available() else 'cpu'))
    os.makedirs(args.work_dir, exist_ok=True)

    classes, train_loader, val_loader = build_loaders(
        args.data, args.img_size, args.batch_size, args.num_workers,
        args.no_aug)
    model_kwargs = _json(args.model_kwargs, '--model-kwargs')
    if args.preset is not None:
        model_kwargs['preset'] = args.preset
    model = timm.create_model(
        args.model, pretrained=False, num_classes=len(classes),
        **model_kwargs).to(device)
    if args.init_checkpoint:
        load_weights(model, args.init_checkpoint, args.unsafe_load)
    if args.fp_weights:
        set_binarization(model, weights=False)
    teacher = build_teacher(args, len(classes))
    if teacher is not None:
        teacher.to(device)
    grs = (GRSSchedule(args.grs_weight, args.grs_warmup_iters)
           if args.grs_weight > 0 else None)

    iters_per_epoch = len(train_loader)
    total = args.epochs * iters_per_epoch
    if args.max_iters is not None:
        total = min(total, args.max_iters)
    optimizer = torch.optim.AdamW(
        param_groups(model, args.weight_decay), lr=args.lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, cosine_lambda(total, args.warmup_iters, args.lr,
                                 args.min_lr))
    meta = dict(model=args.model, model_kwargs=model_kwargs,
                classes=classes, img_size=args.img_size,
                fp_weights=args.fp_weights, teacher=args.teacher)
    start_epoch, it = 0, 0
    if args.resume:
        # the resume file holds tensors, optimizer / scheduler state dicts
        # and numbers only: weights-only unpickling reads it
        ckpt = read_checkpoint(args.resume, allow_unsafe=args.unsafe_load)
        model.load_state_dict(ckpt['state_dict'])
        optimizer.load_state_dict(ckpt['optimizer'])
        scheduler.load_state_dict(ckpt['scheduler'])
        start_epoch, it = ckpt['epoch'], ckpt['iter']
    with open(osp.join(args.work_dir, 'args.json'), 'w') as f:
        json.dump(vars(args), f, indent=2)
    log_file = open(osp.join(args.work_dir, 'log.jsonl'), 'a')
    print(f'{args.model}: {sum(p.numel() for p in model.parameters()):,} '
          f'params, {len(classes)} classes, {total} iterations on {device}',
          flush=True)

    use_bar = not args.no_progress
    if use_bar:
        from tqdm import tqdm
    model.train()
    last_path = None
    for epoch in range(start_epoch, args.epochs):
        if it >= total:
            break
        batches = train_loader
        if use_bar:
            batches = tqdm(train_loader, desc=f'epoch {epoch + 1}/'
                           f'{args.epochs}', dynamic_ncols=True)
        t0 = time.time()
        for images, labels in batches:
            if it >= total:
                break
            images, labels = images.to(device), labels.to(device)
            logits = model(images)
            terms = {}
            if teacher is not None:
                with torch.no_grad():
                    t_logits = teacher(images)
                terms['kd'] = args.kd_alpha * pixel_kd_loss(
                    logits, t_logits, args.kd_temperature, mode='soft_ce')
            if teacher is None or args.kd_alpha < 1:
                weight = 1.0 if teacher is None else 1.0 - args.kd_alpha
                terms['ce'] = weight * F.cross_entropy(
                    logits, labels, label_smoothing=args.label_smoothing)
            if grs is not None:
                terms['grs'] = grs(it) * grs_loss(model)
            loss = sum(terms.values())
            if not torch.isfinite(loss):
                raise FloatingPointError(f'loss is {loss.item()} at iter {it}')
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            it += 1
            record = dict(epoch=epoch + 1, iter=it, loss=loss.item(),
                          lr=optimizer.param_groups[0]['lr'],
                          **{k: float(v.detach()) for k, v in terms.items()})
            if use_bar:
                batches.set_postfix(loss=f'{record["loss"]:.4f}',
                                    lr=f'{record["lr"]:.2e}')
            elif it % args.log_interval == 0 or it == total:
                print(f'epoch {epoch + 1} iter {it}/{total} '
                      f'loss {record["loss"]:.4f} lr {record["lr"]:.2e} '
                      f'({time.time() - t0:.1f}s)', flush=True)
            log_file.write(json.dumps(record) + '\n')
        if use_bar:
            batches.close()
        summary = dict(epoch=epoch + 1, iter=it)
        if val_loader is not None:
            summary['val_top1'] = evaluate(model, val_loader, device)
        name = (f'epoch_{epoch + 1}' if it % iters_per_epoch == 0
                or it < total else f'iter_{it}')
        last_path = save_checkpoint(args.work_dir, name, model, optimizer,
                                    scheduler, epoch + 1, it, meta)
        summary['checkpoint'] = last_path
        print(json.dumps(summary), flush=True)
        log_file.write(json.dumps(summary) + '\n')
        log_file.flush()
    log_file.close()
    return last_path


if __name__ == '__main__':
    main()
