// The web UI is compiled into the binary (src/web.rs): rebuild when a file under ui/ or contracts/abi/
// changes or appears.
fn main() {
    println!("cargo:rerun-if-changed=../ui/index.html");
    println!("cargo:rerun-if-changed=../ui/app.css");
    println!("cargo:rerun-if-changed=../ui/src");
    println!("cargo:rerun-if-changed=../contracts/abi");
}
