# Full fine-tuning: every backbone parameter trains.
_base_ = ['./mini-vtab_vit-demo.py']
