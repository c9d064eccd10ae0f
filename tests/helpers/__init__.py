"""Helpers shared by the test tiers (unit, integration, e2e): written once, imported from here."""
