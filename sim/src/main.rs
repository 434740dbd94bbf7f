//! `quorate-sim`: seeded fault simulations of Quorate's core. See `quorate-sim --help`.

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let code = quorate_sim::cli::main(&args, &mut std::io::stdout(), &mut std::io::stderr());
    std::process::exit(code);
}
