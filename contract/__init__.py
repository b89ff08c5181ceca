"""The contract between Berth's processes (filled in by the contract work: see issue 13)."""
