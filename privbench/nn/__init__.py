"""Building blocks that methods and attacks share: BatchNorm statistics and their inversion
(ZSDG), the conditional VAE. The core keeps them so that no plugin imports another."""
