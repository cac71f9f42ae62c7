from kosmo.cli import main

main()
