"""miga_fast's public functional ops, one module per op family."""

from .mine import mine_bound, mine_pair_scores, mine_terms
from .projection import mi_fgsm_step_, pgd_step_, pgd_step_linf_image_, project_, random_init_
from .sampler import ddim_step, heterogeneous_noise, inpaint_combine, resample_forward, sampler_step
from .ssim import ms_ssim, ssim, ssim_ball_project_, ssim_ball_scale, ssim_per_channel, ssim_window_ball_project_

__all__ = [
    "pgd_step_",
    "pgd_step_linf_image_",
    "mi_fgsm_step_",
    "project_",
    "random_init_",
    "ssim",
    "ssim_per_channel",
    "ms_ssim",
    "ssim_ball_scale",
    "ssim_ball_project_",
    "ssim_window_ball_project_",
    "mine_pair_scores",
    "mine_bound",
    "mine_terms",
    "heterogeneous_noise",
    "ddim_step",
    "inpaint_combine",
    "resample_forward",
    "sampler_step",
]
