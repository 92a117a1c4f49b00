from freesound.cli import main

main()
