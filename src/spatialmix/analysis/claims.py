"""The claims of the paper: what each says, what is measured, and on which side of which threshold
the paper is; and the `Verdict` a claim gets.

`spatialmix.analysis.decision` turns plain data into verdicts by the rule, and
`spatialmix.analysis.verdict_text` words them; `spatialmix.analysis.verdicts_from_folders` reads the data from
study and run folders.
"""

from __future__ import annotations

from dataclasses import dataclass

from spatialmix.analysis.statistics import Estimate

# The size of the test set a summary's accuracy was measured on (the readers add it from config.json).
TEST_EXAMPLES = "test_examples"
SUPPORTS, CONTRADICTS, INCONCLUSIVE, NOT_RUN = "supports", "contradicts", "inconclusive", "not run"
VERDICT_WORDS = (SUPPORTS, CONTRADICTS, INCONCLUSIVE, NOT_RUN)
CLASSIFICATION_MARGIN = 0.01  # 1 point of accuracy: "nearly the same" (claim 1a)
PSNR_MARGIN_DB = 1.0  # claim 3a
GAIN_FRACTION = 0.9  # claim 3b
AFFORDABLE = 10  # an inconclusive line needing more than 10x its seeds gives a bound, not a verdict


@dataclass(frozen=True)
class Claim:
    """One claim of the paper: what is measured, and on which side of which threshold the paper is."""

    id: str
    paper: str  # what the paper says
    effect: str  # what is measured
    # what is measured: "accuracy", "accuracy per sigma" (fractions of examples), "dB" or "fraction"
    unit: str
    threshold: float  # in the measured unit
    side: int  # +1: the paper's side is above the threshold, -1: below
    studies: str  # the `reproduce` studies that test it

    @property
    def shown(self) -> tuple[float, str]:
        """(scale, label) of the unit a verdict states its numbers in: accuracies in percentage points."""
        return SHOWN_UNITS.get(self.unit, (1.0, ""))


# How a verdict states a measured unit: its numbers are the measured ones times the scale.
SHOWN_UNITS = {"accuracy": (100.0, "pts"), "accuracy per sigma": (100.0, "pts/σ"), "dB": (1.0, "dB")}


CLAIMS: dict[str, Claim] = {
    c.id: c
    for c in [
        Claim(
            "1a",
            "Chans reaches nearly Full's accuracy",
            "Chans − Full clean test accuracy",
            "accuracy",
            -CLASSIFICATION_MARGIN,
            +1,
            "classification",
        ),
        Claim(
            "1b",
            "Space is clearly worse than Full",
            "Space − Full clean test accuracy",
            "accuracy",
            0.0,
            -1,
            "classification",
        ),
        Claim(
            "2a",
            "Chans is more robust than Full",
            "Chans − Full robust accuracy",
            "accuracy",
            0.0,
            +1,
            "robustness",
        ),
        Claim(
            "2b",
            "smoothing Chans's frozen filters adds robustness",
            "slope of Chans robust accuracy vs smoothing sigma",
            "accuracy per sigma",
            0.0,
            +1,
            "smoothing",
        ),
        Claim(
            "3a",
            "Chans un-shuffles as well as Full",
            "Chans − Full un-shuffling PSNR",
            "dB",
            -PSNR_MARGIN_DB,
            +1,
            "unshuffle",
        ),
        Claim(
            "3b",
            "Chans recovers nearly all Full recovers",
            "(Chans − floor) / (Full − floor) PSNR",
            "fraction",
            GAIN_FRACTION,
            +1,
            "unshuffle",
        ),
    ]
}
"""The paper's claims by id (1a, 1b, 2a, 2b, 3a, 3b), in the order the verdict table lists them."""


@dataclass(frozen=True)
class Verdict:
    """One line of the verdict table. Its numbers (``estimate``'s value, interval and spread, and
    ``detectable``) are in the unit the table shows, `unit`: percentage points for accuracies,
    dB for PSNR."""

    claim: str  # an id of CLAIMS
    effect: str  # what was measured (with the budget for 2a / 2b)
    estimate: Estimate | None  # None: not run
    verdict: str
    scope: str = ""  # which setting of a sweep, "" when there is one
    details: str = ""  # McNemar per seed, why an interval is missing, the command to run
    detectable: float | None = None  # the distance from the threshold these seeds decide at 80% power
    seeds_needed: int | None = None  # seeds the observed spread needs to decide the observed effect

    @property
    def paper(self) -> str:
        return CLAIMS[self.claim].paper

    @property
    def unit(self) -> str:
        """``pts``, ``pts/σ``, ``dB`` or ``''`` (a plain ratio)."""
        return CLAIMS[self.claim].shown[1]
