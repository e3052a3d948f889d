from .rel_pos_resize import patch_mmpretrain_rel_pos_resize, resize_relative_position_bias_table

__all__ = ['patch_mmpretrain_rel_pos_resize', 'resize_relative_position_bias_table']
