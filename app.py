"""The Hugging Face Space's entry point (README front matter ``app_file: app.py``): ``python app.py [options]`` serves
the Q-Ground app, as ``python -m qground serve [options]`` does; the app itself is ``qground/app.py``."""

from qground.app import main

if __name__ == "__main__":
    main()
