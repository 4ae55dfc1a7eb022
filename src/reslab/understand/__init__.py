"""Why residual networks work, measured: lesions, loss landscapes, gradients through depth, and Grad-CAM.

Pure functions on a model and fixed tensors, returning plain data (lists of dicts, floats) for tables, CSV and
figures; each leaves the model as it was. One module per paper:

  lesion      Veit, Wilber, Belongie (2016): delete or reorder blocks of a trained network at test time
  landscape   Li, Xu, Taylor, Studer, Goldstein (2018): loss along filter-normalised random directions; Hessian
  gradients   Balduzzi et al. (2017) shattered gradients; per-layer gradient norms (Yang et al. 2019)
  cam         Selvaraju et al. (2017): Grad-CAM heat maps and their overlay images
"""

from reslab.understand.cam import cam_overlay, grad_cam, grad_cam_parts, save_cam_overlay, scale_maps
from reslab.understand.common import (
    classification_metrics,
    eval_mode,
    evaluator,
    module_state,
    preserved_state,
    same_state,
)
from reslab.understand.gradients import (
    calibrate_bn,
    correlation_matrix,
    gradient_correlation,
    input_gradients_along_line,
    layer_gradient_norms,
    summarize_gradient_norms,
    weight_layers,
)
from reslab.understand.landscape import (
    hessian_extreme_eigenvalues,
    hessian_vector_product,
    loss_surface,
    random_direction,
    rise_with_error,
    summarize_surface,
)
from reslab.understand.lesion import (
    BlockInfo,
    BranchRemoved,
    compatible_pairs,
    delete_each_block,
    delete_random_blocks,
    kendall_tau,
    lesion_study,
    lesioned,
    list_blocks,
    removable_blocks,
    reorder_blocks,
    reordered,
    summarize_lesions,
)

__all__ = [
    "BlockInfo",
    "BranchRemoved",
    "calibrate_bn",
    "cam_overlay",
    "classification_metrics",
    "compatible_pairs",
    "correlation_matrix",
    "delete_each_block",
    "delete_random_blocks",
    "eval_mode",
    "evaluator",
    "grad_cam",
    "grad_cam_parts",
    "gradient_correlation",
    "hessian_extreme_eigenvalues",
    "hessian_vector_product",
    "input_gradients_along_line",
    "kendall_tau",
    "layer_gradient_norms",
    "lesion_study",
    "lesioned",
    "list_blocks",
    "loss_surface",
    "module_state",
    "preserved_state",
    "random_direction",
    "removable_blocks",
    "reorder_blocks",
    "reordered",
    "rise_with_error",
    "same_state",
    "save_cam_overlay",
    "scale_maps",
    "summarize_gradient_norms",
    "summarize_lesions",
    "summarize_surface",
    "weight_layers",
]
