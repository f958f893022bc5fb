"""Reconciliation logic: one service per resource kind, called by the kopf handlers."""
