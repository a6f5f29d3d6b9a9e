"""The curriculum lab: the paper's methods, as the shipped configs define them, trained on the fast BoxPolicy."""
from medloc_lightning.lab.runs import (CONFIGS, RECIPE, REGIMES, SAME_AS_RECIPE, EarlyGroups, LabResult, Method, Prior,
                                       Regime, build_prior, lab_data, load_method, method_names, run)

__all__ = ["CONFIGS", "RECIPE", "REGIMES", "SAME_AS_RECIPE", "EarlyGroups", "LabResult", "Method", "Prior", "Regime",
           "build_prior", "lab_data", "load_method", "method_names", "run"]
