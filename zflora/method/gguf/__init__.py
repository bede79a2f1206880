"""GGUF in and out, one job per module.

- `presets`: which .gguf file a preset name or path means (`resolve_gguf`, `is_gguf_ref`).
- `read`: dequantize a GGUF base into a plain model (`load_gguf`), or once into a
  safetensors directory (`dequantize_to_directory`).
- `sidecar`: `gguf_tokenizer.json`, the source file's tokenizer fields kept next to a
  checkpoint (`write_sidecar`, `read_sidecar`, `copy_sidecar`).
- `tokenizer`: convert a Hugging Face tokenizer to GGUF fields when there is no sidecar.
- `export`: write a (fused) checkpoint as one GGUF file (`export_gguf`).
"""
