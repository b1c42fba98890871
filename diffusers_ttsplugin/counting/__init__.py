"""The counting task and the small flow model trained for it (issue 13: a trained model to search).

A tiny FLUX-architecture pipeline trained here with flow matching on procedurally rendered 32×32 images of
coloured shapes ("three red circles and one blue square"), an exact object counter, the paper's counting reward
and metrics (RSS, accuracy), and a small trained prompt–image matching score (a stand-in for VQAScore).

```python
from diffusers_ttsplugin import FlowSDEScheduler, InferenceScaler
from diffusers_ttsplugin.counting import CountingReward, count_objects, load_pipeline, make_prompts

pipe = load_pipeline()                                   # the shipped weights (a diffusers FluxPipeline subclass)
pipe.scheduler = FlowSDEScheduler.from_config(pipe.scheduler.config)
prompts = make_prompts(8, seed=0)                        # .prompt, .counts
images = pipe([p.prompt for p in prompts], output_type="pt").images
count_objects(images)                                    # [{"red circle": 3, "green triangle": 0, ...}, ...]
InferenceScaler(pipe, CountingReward(), method="rbf", nfe_budget=100)(prompts[0].prompt)
```
"""

from .counter import count_objects
from .files import MODEL_CARD, ModelFilesError, load_pipeline
from .metrics import count_errors, counting_metrics
from .prompts import KIND_NAMES, CountPrompt, format_prompt, make_prompts, parse_prompt
from .rewards import CountingReward, CountMatchReward

__all__ = [
    "KIND_NAMES",
    "MODEL_CARD",
    "CountMatchReward",
    "CountPrompt",
    "CountingReward",
    "ModelFilesError",
    "count_errors",
    "count_objects",
    "counting_metrics",
    "format_prompt",
    "load_pipeline",
    "make_prompts",
    "parse_prompt",
]
