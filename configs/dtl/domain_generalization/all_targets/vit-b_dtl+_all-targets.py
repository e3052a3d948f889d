# Domain generalization, one model for all targets (an option; the paper trains
# one model per target, see ../vit-b_dtl+_imagenet*.py): DTL+ on ViT-B/16
# trained once on ImageNet 16-shot with the ImageNet recipe (lr 1e-4), the last
# checkpoint tested on ImageNet val, -V2, -Sketch, -A and -R in one pass. Five
# times cheaper; -Sketch, -A and -R then use ImageNet's lr, not their own.
# Suite: `tools/run_suite.py domain-generalization-all-targets`.
_base_ = '../vit-b_dtl+_imagenet.py'

test_dataloader = dict(dataset=dict(
    name=['imagenet', 'imagenetv2', 'imagenet-sketch', 'imagenet-adversarial',
          'imagenet-rendition']))
