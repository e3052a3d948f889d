# DTL+ on digits_rot: rotation of the digits: 0/90/180/270 degrees (structured).
_base_ = ['./_base_/dtl+.py']

task = 'digits_rot'
num_classes = 4
# chosen on train800 -> val200 by tools/misc/sweep_demo_lr.py --write
# (val200 top-1 of the grid, seed 0: 0.003: 63.5, 0.01: 76.5, 0.03: 77.0, 0.09: 57.0)
lr = 0.03

model = dict(head=dict(num_classes=num_classes))
data_preprocessor = dict(num_classes=num_classes)
train_dataloader = dict(dataset=dict(task=task, num_classes=num_classes))
val_dataloader = dict(dataset=dict(task=task, num_classes=num_classes))
test_dataloader = val_dataloader
optim_wrapper = dict(optimizer=dict(lr=lr))
