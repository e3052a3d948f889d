# DTL+ on a random trunk (control) on digits: scikit-learn digits (cross-domain, natural).
_base_ = ['./_base_/dtl+random-trunk.py']

task = 'digits'
num_classes = 10
# chosen on train800 -> val200 by tools/misc/sweep_demo_lr.py --write
# (val200 top-1 of the grid, seed 0: 0.003: 86.5, 0.01: 95.5, 0.03: 97.0, 0.09: 94.5)
lr = 0.03

model = dict(head=dict(num_classes=num_classes))
data_preprocessor = dict(num_classes=num_classes)
train_dataloader = dict(dataset=dict(task=task, num_classes=num_classes))
val_dataloader = dict(dataset=dict(task=task, num_classes=num_classes))
test_dataloader = val_dataloader
optim_wrapper = dict(optimizer=dict(lr=lr))
