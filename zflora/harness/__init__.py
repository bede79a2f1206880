"""The experiment harness around the method: the compared methods (base, LoRA, zFLoRA,
full fine-tuning), training, evaluation, generation, the embedded tiny base, task data,
latency profiling and the demo. It uses `zflora.method`; the method never imports it.
"""
