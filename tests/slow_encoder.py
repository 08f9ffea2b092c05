"""A melpatch that sleeps per batch, so tests can kill an extract process mid-run (loaded as a user plug-in)."""

import time

from embedcache.encoders.melpatch import MelPatch


class SlowMelPatch(MelPatch):
    name = "slow_melpatch"

    def forward(self, wave, layers=(0,), lengths=None):
        time.sleep(0.25)
        return super().forward(wave, layers, lengths)


def create(checkpoint=None, random_init=False, **options):
    return SlowMelPatch(**options)
