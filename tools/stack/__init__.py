"""`make run`: the whole local stack in one command (Azurite, gpusim, identity, devhost)."""
