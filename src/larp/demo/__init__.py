"""``larp demo``: the whole of LARP, trained and evaluated on the built-in synthetic videos in minutes.

    from larp.demo import run_demo
    metrics = run_demo("larp-demo")          # or: larp demo --out larp-demo
"""

from larp.demo.pipeline import BARS, STAGES, run_demo
from larp.demo.recipes import DemoPlan, demo_plan

__all__ = ["BARS", "STAGES", "DemoPlan", "demo_plan", "run_demo"]
