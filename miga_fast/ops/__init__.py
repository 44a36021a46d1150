"""miga_fast's public functional ops, one module per op family."""
from .projection import mi_fgsm_step_, pgd_step_, project_, random_init_

__all__ = ["pgd_step_", "mi_fgsm_step_", "project_", "random_init_"]
