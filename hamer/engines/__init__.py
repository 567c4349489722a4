"""Corpus engines: ``local`` (threads on this machine) and ``ray`` (a Ray cluster)."""
