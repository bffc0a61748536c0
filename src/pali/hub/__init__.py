"""Hugging Face Hub integration: from_pretrained / save_pretrained / push_to_hub / from_unimodal."""
