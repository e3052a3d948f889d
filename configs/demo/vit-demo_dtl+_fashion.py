# DTL+ on fashion: Fashion-MNIST test images (in-domain, natural).
_base_ = ['./_base_/dtl+.py']

task = 'fashion'
num_classes = 10
# chosen on train800 -> val200 by tools/misc/sweep_demo_lr.py --write
# (val200 top-1 of the grid, seed 0: 0.00027: 89.0, 0.0009: 88.0, 0.003: 86.5, 0.01: 86.0,
# 0.03: 85.5)
lr = 0.00027

model = dict(head=dict(num_classes=num_classes))
data_preprocessor = dict(num_classes=num_classes)
train_dataloader = dict(dataset=dict(task=task, num_classes=num_classes))
val_dataloader = dict(dataset=dict(task=task, num_classes=num_classes))
test_dataloader = val_dataloader
optim_wrapper = dict(optimizer=dict(lr=lr))
