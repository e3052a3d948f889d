# DTL+ on a random eva02 trunk on fashion: Fashion-MNIST test images (in-domain, natural).
_base_ = ['./_base_/dtl+random-trunk_eva02.py']

task = 'fashion'
num_classes = 10
# the lr of the ViT random-trunk control on this task (no sweep for this trunk)
lr = 0.03

model = dict(head=dict(num_classes=num_classes))
data_preprocessor = dict(num_classes=num_classes)
train_dataloader = dict(dataset=dict(task=task, num_classes=num_classes))
val_dataloader = dict(dataset=dict(task=task, num_classes=num_classes))
test_dataloader = val_dataloader
optim_wrapper = dict(optimizer=dict(lr=lr))
