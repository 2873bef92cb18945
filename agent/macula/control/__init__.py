"""Local control endpoint: a Unix socket the CLI talks to (status, discover, ...)."""
