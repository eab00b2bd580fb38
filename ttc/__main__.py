from ttc.entry import main

main()
