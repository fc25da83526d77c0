from evalkit.launch import main

main()
