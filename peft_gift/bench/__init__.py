"""Applications over the recipes, behind the entry points in ``scripts/``: the accuracy and speed benchmarks
(:mod:`.accuracy`, :mod:`.speed`), the adapter visualiser (:mod:`.visualize`), the distributed checks
(:mod:`.ddp_check`, :mod:`.fsdp_trainer_check`, :mod:`.deepspeed_check`), the GPU check (:mod:`.gpu_check`), the
4-bit memory measurement (:mod:`.quant_memory`) and the vLLM comparison (:mod:`.vllm_compare`, which runs standalone
outside the package); :mod:`.tiny` builds their tiny models.

Layering: these modules import the library (``peft_gift``) and :mod:`peft_gift.recipes`; neither imports anything
from here. Importing this package imports none of its modules. Progress goes through module loggers; the scripts
configure logging.
"""
