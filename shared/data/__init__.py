"""Data: video io, training clips (found, preprocessed, cached once decoded, split, served in
batches), `prepare`, statistics, previews, the latent cache and the synthetic toy signer.
Imports only `shared.config`."""
