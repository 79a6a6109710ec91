"""Model files: GGUF/safetensors headers and the inventory, resumable verified downloads, the
bundled demo model. defs.py: model_downloads, model_files, models_job."""
