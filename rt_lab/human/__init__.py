"""Human evaluation of a sweep (An et al. §4): raters see one instruction and two blinded responses (two
methods' outputs for it), rate each (Acceptable: Excellent / Acceptable: Sufficient / Not acceptable) and pick
the more helpful one or a tie; the report gives acceptability per method, win / tie / loss, inter-rater
agreement and the LLM judge's agreement with the raters.

    python -m rt_lab.human serve SWEEP_DIR --pairs rt:it [--raters 3] [--port 8000]
    python -m rt_lab.human report SWEEP_DIR

Modules: `pairing` (the items: run pairs and instructions), `assignment` (each rater's order and sides),
`moderation` (filters that hide or flag items), `store` (SQLite), `app` (the Flask web app), `agreement`
(Krippendorff's alpha, Fleiss' kappa), `report`."""

from rt_lab.human.moderation import Moderation

__all__ = ["Moderation"]
