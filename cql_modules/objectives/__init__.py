"""Losses: continuous CQL / Cal-QL (:mod:`.cql`), its pure terms (:mod:`.terms`), the fused
CPU critic pass (:mod:`.fused`)."""
