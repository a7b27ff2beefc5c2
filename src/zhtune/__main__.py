from zhtune.cli import main

main()
