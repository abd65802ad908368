fn main() {
    println!("provium");
}
