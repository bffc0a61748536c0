"""Layers shared by the towers: attention with its backends (``attention``), the MLP block
(``mlp``), position-embedding resampling (``pos_embed``), and building on the meta device
(``meta``). Knows no tower, no model and no file."""
