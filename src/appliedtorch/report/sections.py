"""How a stage appears in the report (`StageSection`), and the three PINN problems' sections.

from appliedtorch.report.sections import PINN_SECTIONS  # pinn, pinn_inverse, pinn_family
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class StageSection:
    """How one stage appears in the report: where its outputs are and which numbers lead."""

    stage: str  # DVC stage name (`dvc repro <stage>`)
    title: str
    folder: str  # reports/<folder>/
    experiment: str  # MLflow experiment
    params_section: str  # params.yaml section the stage logs (params.md5 is computed from it)
    figures: tuple[tuple[str, str], ...]  # (file name, caption); names as in dvc.yaml
    headline: tuple[str, ...]  # metrics.json keys shown first, in this order
    dataset: str | None = None


# The forward problem beside solve_bvp, the inverse problem and the parametric family.
PINN_SECTIONS: tuple[StageSection, ...] = (
    StageSection(
        "pinn",
        "PINN: u'' + u = 0 on [0, π/2], u(0) = 0, u(π/2) = 1 (exact: sin x)",
        "pinn",
        "pinn-ode",
        "pinn",
        (
            ("solution.png", "Network solution against sin x"),
            ("error.png", "Pointwise error"),
            ("loss.png", "Training loss"),
        ),
        (
            "max_abs_error",
            "max_error_digits",
            "l2_relative_error",
            "boundary_error",
            "final_loss",
            "seconds",
            "bvp_max_abs_error",
            "bvp_max_error_digits",
            "bvp_nodes",
            "bvp_seconds",
            "error_ratio_pinn_to_bvp",
            "time_ratio_pinn_to_bvp_seconds",
        ),
    ),
    StageSection(
        "pinn_inverse",
        "PINN, inverse problem: k in u'' + k·u = 0 from noisy observations of u",
        "pinn_inverse",
        "pinn-inverse",
        "pinn_inverse",
        (
            ("fit.png", "Observations and the fitted net"),
            ("residual.png", "Residual at the observations"),
            ("k_trace.png", "k̂ over training, against the least-squares k̂"),
        ),
        (
            "k_hat",
            "k_standard_error",
            "k_lstsq",
            "k_difference",
            "k_difference_digits",
            "k_true",
            "k_error",
            "points",
            "seconds",
        ),
    ),
    StageSection(
        "pinn_family",
        "PINN, parametric family: one net u(x; k) for u'' + k·u = 0, k in a range",
        "pinn_family",
        "pinn-family",
        "pinn_family",
        (
            ("error_by_k.png", "Error against the closed form on values of k not trained on"),
            ("solutions.png", "The net against the closed form for three k"),
            ("loss.png", "Training loss"),
        ),
        (
            "max_abs_error",
            "max_error_digits",
            "eval_k_points",
            "eval_x_points",
            "worst_k",
            "seconds",
        ),
    ),
)
