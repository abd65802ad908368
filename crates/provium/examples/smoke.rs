use provium::{
    config::Config,
    image::Images,
    vm::{BootOpts, Vm},
    vmm::Accel,
};
use std::sync::Arc;
fn main() {
    let images = Arc::new(Images::new(Arc::new(Config::default())));
    let t = std::time::Instant::now();
    images.default_guest().unwrap();
    eprintln!("prepare {:?}", t.elapsed());
    let mut vm = Vm::new("v", "default", BootOpts::default(), images, Accel::Tcg);
    let t = std::time::Instant::now();
    if let Err(e) = vm.boot(&BootOpts::default()) {
        let mut s: &dyn std::error::Error = &e;
        eprintln!("{s}");
        while let Some(n) = s.source() {
            eprintln!("  {n}");
            s = n;
        }
        return;
    }
    eprintln!("boot {:?} {:?}", t.elapsed(), vm.last_boot);
    let out = vm
        .exec(provium_protocol::ExecRequest {
            argv: vec!["uname".into(), "-s".into()],
            ..Default::default()
        })
        .unwrap();
    eprintln!(
        "{:?} {:?}",
        out.status,
        String::from_utf8_lossy(&out.stdout)
    );
    let t = std::time::Instant::now();
    for _ in 0..20 {
        vm.ping().unwrap();
    }
    eprintln!("ping {:?}", t.elapsed() / 20);
    let t = std::time::Instant::now();
    for _ in 0..20 {
        vm.exec(provium_protocol::ExecRequest {
            argv: vec!["true".into()],
            ..Default::default()
        })
        .unwrap();
    }
    eprintln!("true {:?}", t.elapsed() / 20);
    vm.shutdown();
}
