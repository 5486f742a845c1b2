"""Evaluation: one runner (records -> complete -> scorer -> report) and one module per task. See runner.py."""
from .runner import SCORERS, Item, Scorer, available_scorers, evaluate, get_scorer, register_scorer, write_report

__all__ = ["SCORERS", "Item", "Scorer", "available_scorers", "evaluate", "get_scorer", "register_scorer",
           "write_report"]
