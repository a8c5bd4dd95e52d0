"""The built-in stages of ``memlens run``, one module each; importing this package registers their
rows in the Stage table, in running order.

Each module holds one stage whole: its settings class (a table of :class:`~memlens.RunConfig`), the
function that runs its analysis into the run folder, the function that draws its report section,
and its row (:class:`~memlens.run.stage.Stage`: name, files, title, the stages it needs). Perturbation
runs before the head analysis so that activation patching reuses its perturbed paragraphs.
"""

from memlens.run.stages import scan, gradients, perturb, heads, head_ablation, rare_attention, pair_gradients  # noqa: F401
from memlens.run.stages import unlearn, tradeoff, noise, localize, resurface, report  # noqa: F401
