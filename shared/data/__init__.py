"""Data: video io, the GIF/MP4 + caption dataset and its caches, `prepare`, statistics, previews,
the latent cache and the synthetic toy signer. Imports only `shared.config`."""
