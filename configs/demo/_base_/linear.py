# Linear probe: the whole trunk frozen (blocks, embeddings and the final
# LayerNorm: frozen_stages = number of blocks); only the head trains.
_base_ = ['./mini-vtab_vit-demo.py']

model = dict(backbone=dict(frozen_stages=6))
