# Binary ImageNet-1k pretraining of the fully binary DIDB DeiT-S backbone
# through mmpretrain; recipe and usage as configs/pretrain/didb_swin_t_in1k.py
# (BinaryViT-Le: AdamW lr 5e-4 at batch 512, cosine, 300 epochs, KD from an
# FP DeiT-S). The classifier pools the patch tokens of the last block.
_base_ = ['./didb_swin_t_in1k.py']
model = dict(
    backbone=dict(
        _delete_=True,
        type='mmseg.DIDBViT',
        preset={{_base_.preset}},
        arch='deit-small',
        img_size=224,
        patch_size=16,
        drop_path_rate=0.1,
        final_norm=True,
        out_indices=(-1, )),
    head=dict(in_channels=384))
