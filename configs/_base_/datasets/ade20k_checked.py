# mmseg's ADE20K (150 classes, 512x512 crops) with a dataset type that fails
# at once, saying where to download ADEChallengeData2016.zip and where to
# unzip it, when data/ade/ADEChallengeData2016 is missing.
_base_ = ['mmseg::_base_/datasets/ade20k.py']
dataset_type = 'ADE20KCheckedDataset'
train_dataloader = dict(dataset=dict(type=dataset_type))
val_dataloader = dict(dataset=dict(type=dataset_type))
test_dataloader = val_dataloader
