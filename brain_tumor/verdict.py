"""The verdict: what a prediction is taken to say, and in which words, decided once for the app, the CLI, the JSON and the report.

Three outcomes, in this order of precedence:

- ``not_assessed``: the input does not look like a brain MRI (blank, or far from every training MRI in feature
  space). No class is given as the answer anywhere; the probabilities are the network's, not a diagnosis.
- ``needs_review``: the calibrated confidence is below the model's abstention threshold. The leading class is
  named only as "leans ...".
- ``answered``: the leading class is the answer.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

NOT_MRI = "this does not look like a brain MRI slice — no diagnosis given"
NEEDS_REVIEW = "uncertain — needs review"
DISCLAIMER = "Research demo, not a diagnostic device. It must not be used to make clinical decisions."

ANSWERED, REVIEW, NOT_ASSESSED = "answered", "needs_review", "not_assessed"


@dataclass(frozen=True)
class Verdict:
    status: str  # answered | needs_review | not_assessed
    label: Optional[str]  # the class given as the answer (its canonical name); None unless answered
    headline: str  # the answer in a few words: a table cell, a heading
    detail: str  # one sentence on why, for the app's summary and the report

    @property
    def needs_review(self) -> bool:
        """Every answer that is not plainly given needs a person's review, a withheld one included."""
        return self.status != ANSWERED


def decide(label: str, confidence: float, looks_like_mri: bool, below_threshold: bool,
           threshold: float = 0.0, display: Callable[[str], str] = str) -> Verdict:
    """The verdict on one slice from its leading class, calibrated confidence and the two checks."""
    shown = display(label)
    if not looks_like_mri:
        return Verdict(NOT_ASSESSED, None, NOT_MRI,
                       "The image is blank or unlike every brain MRI the model was trained on, so no class is "
                       "assessed; the probabilities below are not a diagnosis.")
    if below_threshold:
        return Verdict(REVIEW, None, f"{NEEDS_REVIEW} (leans {shown})",
                       f"Confidence {confidence:.1%} is below the model's threshold of {threshold:.0%}: "
                       "a person should read this slice.")
    return Verdict(ANSWERED, label, shown, f"The leading class, with a calibrated confidence of {confidence:.1%}.")
