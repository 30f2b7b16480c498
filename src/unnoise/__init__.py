"""unnoise: diffusion models on one mathematical core, x_t = alpha(t) x0 + sigma(t) noise.

    pipe = unnoise.Pipeline.load("runs/demo")          # load once
    x = pipe.sample(8, label=3, sampler="dpmpp_2m")     # sample many
"""

from importlib.metadata import version

from unnoise.diffusers_adapter import from_diffusers  # never imports diffusers (a test-only dependency)
from unnoise.pipeline import Pipeline

__version__ = version("unnoise")
__all__ = ["Pipeline", "from_diffusers", "__version__"]
