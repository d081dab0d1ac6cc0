"""The application on top: the backend contract, training loop, sampling driver, CLIs, demo,
doctor, results pages. Receives a `Backend`; never imports a backend package."""
