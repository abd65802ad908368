//! [`Vm`]: a name, a profile, a state (see [`super::state`]), and
//! operations that check the state first. Every wrong-state call fails with
//! the VM's name, its state and what to do.
//!
//! A boot or restore reserves the guest's memory (plus QEMU's overhead) and
//! vCPUs from the file's pool account before QEMU starts, or uses what a
//! lab reserved for it ([`Vm::grant`]); the reservation goes back whenever
//! QEMU stops (shutdown, a lost guest, a failed launch). [`snapshot`] saves
//! and restores.

mod snapshot;

use std::sync::Arc;
use std::time::Duration;

use provium_protocol::{DirEntry, ExecOutput, ExecRequest, Metadata, OpErrorKind};

use super::error::VmError;
use super::kill::KillSwitch;
use super::nics::{self, Attachment, Nics};
use super::opts::{files_cpio, pool_need, spec_memory_mib, BootOpts};
use super::resources::Registry;
use super::state::{Needs, VmState};
use crate::agent::{AgentClient, AgentError};
use crate::events::{Event, Events};
use crate::image::Images;
use crate::pool::{Account, Reservation, ResourceAmount};
use crate::vmm::snapshot::{self as snapfile, SnapshotMeta};
use crate::vmm::{self, argv, Accel, Boot, Device, Instance, LaunchError, LaunchSpec, Machine, Ram};

pub struct Vm {
    name: String,
    profile: String,
    state: VmState,
    create_opts: BootOpts,
    images: Arc<Images>,
    accel: Accel,
    instance: Option<Instance>,
    /// Console tail kept after the VM stops, for failure reports.
    last_console: String,
    kill_switch: KillSwitch,
    /// Who stopped this VM when provium did (`the timeout of test "x"`).
    stopped_by: Option<String>,
    resources: Arc<Registry>,
    /// What the running guest was started with, which a snapshot records.
    running_as: Option<SnapshotMeta>,
    events: Events,
    /// The bridges it is attached to, and through which NIC.
    nics: Nics,
    /// Its data disks and the files behind them.
    pub(super) disks: super::disks::Disks,
    /// Kernel's own boot time (guest uptime when the agent started) and
    /// spawn → handshake, for the last boot.
    pub last_boot: Option<(Duration, Duration)>,
    /// When the running QEMU was spawned (`vm_spawned` was emitted and
    /// `vm_shutdown` is owed).
    spawned_at: Option<std::time::Instant>,
    /// The console since the running test started, for the badness checks.
    console_watch: super::badness::ConsoleWatch,
    /// What boots reserve from, what the running QEMU holds, and what a
    /// lab reserved for the next boot or restore.
    pool: Account,
    reservation: Option<Reservation>,
    granted: Option<Reservation>,
}

impl Vm {
    pub fn new(name: &str, profile: &str, opts: BootOpts, images: Arc<Images>, accel: Accel) -> Vm {
        Vm {
            name: name.to_string(),
            profile: profile.to_string(),
            state: VmState::Created,
            create_opts: opts,
            images,
            accel,
            instance: None,
            last_console: String::new(),
            kill_switch: KillSwitch::default(),
            stopped_by: None,
            resources: Arc::default(),
            running_as: None,
            events: Events::discard(),
            nics: Nics::default(),
            disks: Default::default(),
            last_boot: None,
            spawned_at: None,
            console_watch: Default::default(),
            pool: Account::unlimited(),
            reservation: None,
            granted: None,
        }
    }

    /// Reserves this VM's boots through `pool` (a file's account).
    pub fn with_pool(mut self, pool: Account) -> Vm {
        self.pool = pool;
        self
    }

    /// The account its boots reserve through.
    pub fn pool(&self) -> Account {
        self.pool.clone()
    }

    /// What booting with `opts` (over the creation options) reserves.
    pub fn boot_need(&self, opts: &BootOpts) -> ResourceAmount {
        let opts = self.merged_opts(opts);
        pool_need(spec_memory_mib(&opts), opts.cpus.unwrap_or(1))
    }

    /// A boot's options over the creation options over the profile's VM
    /// defaults (`memory`, `cpus`).
    fn merged_opts(&self, opts: &BootOpts) -> BootOpts {
        let mut merged = opts.over(&self.create_opts);
        if let Some(p) = self.images.config().profiles.get(&self.profile) {
            merged.memory = merged.memory.or(p.memory);
            merged.cpus = merged.cpus.or(p.cpus);
        }
        merged
    }

    /// Hands the VM a reservation made for its next boot or restore (a
    /// lab's joint one); it goes back if that does not use it.
    pub fn grant(&mut self, r: Reservation) {
        self.granted = Some(r);
    }

    /// Holds `need` for the QEMU about to start: what was granted if it
    /// covers it, else a reservation from the pool (waiting for room).
    fn reserve(&mut self, action: &'static str, need: ResourceAmount) -> Result<(), VmError> {
        use crate::pool::amount::Amounts;
        let granted = self.granted.take().filter(|g| need.fits_in(g.amount()));
        let r = match granted {
            Some(g) => g,
            None => self.pool.reserve(need).map_err(|source| VmError::Pool {
                vm: self.name.clone(),
                action,
                source: Box::new(source),
            })?,
        };
        self.reservation = Some(r);
        Ok(())
    }

    /// Sends this VM's events (booted, stopped) to `events`.
    pub fn with_events(mut self, events: Events) -> Vm {
        self.events = events;
        self
    }

    fn emit_booted(&self, took: Duration) {
        self.events.emit(Event::VmBooted { file: self.events.file(), vm: self.name.clone(), took });
    }

    /// QEMU is about to be spawned with `memory_mib` of guest RAM.
    fn emit_spawned(&mut self, memory_mib: u64) {
        self.spawned_at = Some(std::time::Instant::now());
        self.events.emit(Event::VmSpawned {
            file: self.events.file(),
            vm: self.name.clone(),
            profile: self.profile.clone(),
            memory_bytes: memory_mib << 20,
        });
    }

    /// The QEMU of the last `emit_spawned` is gone (once per spawn): what
    /// it held goes back to the pool, after `vm_stopped` (so a boot it lets
    /// go on is reported after it).
    fn emit_stopped(&mut self) {
        if let Some(at) = self.spawned_at.take() {
            self.events.emit(Event::VmStopped { file: self.events.file(), vm: self.name.clone(), ran: at.elapsed() });
        }
        self.reservation = None;
    }

    /// Stops `inst` (this VM's QEMU, already out of `self.instance`) and
    /// reports it gone ([`Vm::emit_stopped`]).
    fn stop_qemu(&mut self, inst: Instance) {
        inst.stop();
        self.emit_stopped();
    }

    /// A launch that cannot be completed: its QEMU stops, and its pid
    /// (which may be reused now) is no longer the kill switch's.
    fn abandon_launch(&mut self, inst: Instance) {
        self.stop_qemu(inst);
        self.kill_switch.disarm();
    }

    /// A test starts: its console badness checks look at what comes next.
    pub fn mark_console(&mut self) {
        let log = self.instance.as_ref().map(|i| i.paths.console_log.clone());
        self.console_watch.mark(log.as_deref());
    }

    /// Kernel reports on this VM's console since [`Vm::mark_console`]
    /// (including instances stopped since).
    pub fn console_findings(&self) -> Vec<super::badness::Finding> {
        let log = self.instance.as_ref().map(|i| i.paths.console_log.as_path());
        super::badness::scan(&self.console_watch.text(log))
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn profile(&self) -> &str {
        &self.profile
    }

    pub fn state(&self) -> VmState {
        self.state
    }

    /// The VM's open streams and file handles.
    pub fn resources(&self) -> Arc<Registry> {
        self.resources.clone()
    }

    /// The console log and the console socket, while the VM runs.
    pub fn console_paths(&self) -> Option<(std::path::PathBuf, std::path::PathBuf)> {
        self.instance.as_ref().map(|i| (i.paths.console_log.clone(), i.paths.console_sock.clone()))
    }

    /// The transport id of the running instance (`nil` in Lua before boot).
    pub fn cid(&self) -> Option<u64> {
        self.instance.as_ref().map(|i| i.id)
    }

    /// The instance of a VM that runs (booted or paused), for the
    /// operations of `super::nixos`.
    pub(super) fn instance_mut(&mut self) -> Option<&mut Instance> {
        self.instance.as_mut()
    }

    pub(super) fn instance_ref(&self) -> Option<&Instance> {
        self.instance.as_ref()
    }

    /// Stops QEMU like [`Vm::shutdown`] and records who stopped it, which
    /// later wrong-state errors quote (`it was stopped by vm:crash()`).
    pub(super) fn stop_as(&mut self, by: &str) {
        self.shutdown();
        self.stopped_by = Some(by.to_string());
    }

    /// When provium itself killed the VM (a timeout pulled its kill
    /// switch): records it as a shutdown, not a crash, and the error that
    /// says who stopped it.
    pub(super) fn stopped_by_provium(&mut self, op: &'static str) -> Option<VmError> {
        let by = self.kill_switch.reason()?;
        self.stop_as(&by);
        Some(VmError::Stopped { vm: self.name.clone(), op, by })
    }

    fn running(&mut self, action: &'static str, allowed: VmState) -> Result<&mut Instance, VmError> {
        if self.state != allowed {
            let needs = if allowed == VmState::Paused { Needs::Paused } else { Needs::Booted };
            return Err(self.wrong_state(action, needs));
        }
        Ok(self.instance.as_mut().expect("a running VM has an instance"))
    }

    /// A launch-level failure of `action` (boot, restore, reset, reconnect).
    fn launch_failed(&self, action: &'static str) -> impl FnOnce(LaunchError) -> VmError + '_ {
        move |source| VmError::Launch { vm: self.name.clone(), action, source: Box::new(source) }
    }

    fn qmp_failed(&self, op: &'static str, e: crate::vmm::qmp::QmpError) -> VmError {
        VmError::Qmp { vm: self.name.clone(), op, source: e }
    }

    pub fn pause(&mut self) -> Result<(), VmError> {
        let r = self.running("pause", VmState::Booted)?.pause();
        r.map_err(|e| self.qmp_failed("pause", e))?;
        self.state = VmState::Paused;
        Ok(())
    }

    /// QMP `system_wakeup`: wakes a guest that suspended itself (S3). QEMU
    /// refuses when the machine cannot suspend (the default guest's
    /// `microvm` offers only suspend-to-idle, which any interrupt ends).
    pub fn wakeup(&mut self) -> Result<(), VmError> {
        let r = self.running("wakeup", VmState::Booted)?.wakeup();
        r.map_err(|e| self.qmp_failed("wakeup", e))
    }

    pub fn resume(&mut self) -> Result<(), VmError> {
        let r = self.running("resume", VmState::Paused)?.resume();
        r.map_err(|e| self.qmp_failed("resume", e))?;
        self.state = VmState::Booted;
        Ok(())
    }

    /// Warm reboot: the guest starts over (a fresh initramfs, so a fresh
    /// `/tmp`) and the call returns once its agent answers again.
    pub fn reset(&mut self) -> Result<(), VmError> {
        let timeout = self.create_opts.agent_timeout.unwrap_or(crate::image::DEFAULT_AGENT_TIMEOUT);
        let r = self.running("reset", VmState::Booted)?.reset(timeout);
        r.map_err(self.launch_failed("reset"))
    }

    /// Presses the ACPI power button; the guest shuts down gracefully and the
    /// VM ends in `shutdown`.
    pub fn power_button(&mut self) -> Result<(), VmError> {
        let r = self.running("power_button", VmState::Booted)?.power_button(Duration::from_secs(60));
        let powered_off = r.map_err(|e| self.qmp_failed("power_button", e))?;
        if powered_off {
            self.stop_as(super::nixos::power::GUEST_POWERED_OFF);
            Ok(())
        } else {
            self.shutdown();
            Err(VmError::PowerButtonIgnored { vm: self.name.clone() })
        }
    }

    /// The QEMU process id while the VM runs.
    pub fn qemu_pid(&self) -> Option<u32> {
        self.instance.as_ref().map(|i| i.qemu.pid())
    }

    pub fn kill_switch(&self) -> KillSwitch {
        self.kill_switch.clone()
    }

    pub(super) fn wrong_state(&self, action: &'static str, needs: Needs) -> VmError {
        VmError::WrongState {
            vm: self.name.clone(),
            state: self.state,
            action,
            needs,
            way_out: self.state.way_out(needs, self.stopped_by.as_deref()),
        }
    }

    pub fn boot(&mut self, opts: &BootOpts) -> Result<(), VmError> {
        // A lab's grant is for this boot only, whatever happens to it.
        let granted = self.granted.take();
        if self.state != VmState::Created {
            return Err(self.wrong_state("boot", Needs::Created));
        }
        let opts = self.merged_opts(opts);
        let image = self
            .images
            .resolve(&self.profile)
            .map_err(|source| VmError::Image { vm: self.name.clone(), source: Box::new(source) })?;
        for (option, cmdline) in
            [("kernel_cmdline", &opts.kernel_cmdline), ("kernel_cmdline_append", &opts.kernel_cmdline_append)]
        {
            if cmdline.as_deref().is_some_and(|c| image.inject_agent && argv::pins_other_rdinit(c)) {
                return Err(VmError::BadOption {
                    vm: self.name.clone(),
                    option,
                    message: "pins rdinit=, but provium starts its agent as rdinit: remove it, or use a profile with \
                              inject_agent = false whose image starts the agent"
                        .into(),
                });
            }
        }
        // The reference's order: the base (kernel_cmdline, else the
        // profile's), then kernel_cmdline_append, then what provium adds.
        let mut base = opts.kernel_cmdline.clone().unwrap_or(image.cmdline.clone());
        if let Some(extra) = opts.kernel_cmdline_append.as_deref().filter(|e| !e.trim().is_empty()) {
            base = format!("{} {}", base.trim_end(), extra.split_whitespace().collect::<Vec<_>>().join(" "));
        }
        // With a seeded hwrng, the agent stops the kernel's hwrng thread
        // after its first read, so what a test reads is the same each boot
        // (provium-agent's hwrng module).
        let mut extra_cmdline = argv::machine_cmdline();
        extra_cmdline.extend(opts.rng_seed.map(|_| "provium.hwrng=quiet".to_string()));
        if !image.disks.is_empty() || opts.disks.as_ref().is_some_and(|d| !d.is_empty()) {
            extra_cmdline.push(format!("provium.modules={}", crate::guest::ON_DEMAND_MODULES.join(",")));
        }
        let mut machine = Machine::standard(spec_memory_mib(&opts), opts.cpus.unwrap_or(1));
        machine.devices.extend(opts.rng_seed.map(|seed| Device::SeededRng { seed }));
        self.nics.plan_boot(&self.name, opts.nics, &mut machine);
        let disk_files =
            self.disks.plan_boot(&self.name, &image.disks, opts.disks.as_deref().unwrap_or_default(), &mut machine)?;
        if let Some(root) = &image.root_image {
            machine.devices.push(Device::Disk {
                id: crate::guest::ROOT_DISK_SERIAL.to_string(),
                source: crate::vmm::DiskSource::Image { path: root.clone() },
                readonly: true,
            });
        }
        let spec = LaunchSpec {
            accel: self.accel,
            machine: machine.clone(),
            ram: Ram::Anonymous,
            boot: Boot::Kernel {
                kernel: image.kernel,
                initrd: image.initrd,
                cmdline: argv::kernel_cmdline(&base, image.inject_agent, &extra_cmdline),
                rtc_base: opts.initial_time.map(|t| t.floor() as i64),
            },
            scratch: Default::default(),
            disk_files,
        };
        let files = opts.files.as_ref().map(|f| files_cpio(f));
        self.granted = granted;
        let timeout = opts.agent_timeout.unwrap_or(image.agent_timeout);
        self.reserve("boot", pool_need(machine.memory_mib, machine.cpus))?;
        self.emit_spawned(machine.memory_mib);
        let inst = match Instance::launch(&self.name, spec, files, timeout) {
            Ok(inst) => inst,
            Err(e) => {
                self.emit_stopped();
                return Err(self.launch_failed("boot")(e));
            }
        };
        self.kill_switch.arm(inst.qemu.pid());
        self.stopped_by = None;
        if let Some(t) = opts.initial_time {
            // The RTC started at `t` when QEMU did; set it again now so the
            // clock reads `t` when boot() returns, however long boot took.
            let ns = (t * 1e9).round() as i64;
            if let Err(e) = inst.agent.set_time(ns) {
                self.abandon_launch(inst);
                return Err(VmError::Agent { vm: self.name.clone(), op: "boot (initial_time)", source: e });
            }
        }
        self.last_boot = Some((Duration::from_millis(inst.hello.agent_start_uptime_ms), inst.boot_time));
        self.running_as = Some(SnapshotMeta {
            format: snapfile::FORMAT,
            protocol: provium_protocol::PROTOCOL_VERSION,
            profile: self.profile.clone(),
            accel: self.accel.as_str().to_string(),
            machine,
            initial_time: opts.initial_time,
            ram: None,
            disks: Vec::new(),
        });
        if let Err(e) = self.connect_nics(&inst) {
            self.abandon_launch(inst);
            self.running_as = None;
            return Err(e.into());
        }
        self.instance = Some(inst);
        self.apply_disk_faults();
        self.emit_booted(self.instance.as_ref().map(|i| i.boot_time).unwrap_or_default());
        self.state = VmState::Booted;
        Ok(())
    }

    /// After a launch: plugs every attached NIC into its bridge, lowers the
    /// link of the others, gives the guest its addresses and hosts file.
    fn connect_nics(&mut self, inst: &Instance) -> Result<(), nics::NicError> {
        let machine = self.running_as.as_ref().expect("a launched VM records how it runs").machine.clone();
        self.nics.assign_free(&machine);
        let used: Vec<u8> = self.nics.attachments().iter().filter_map(|a| a.nic).collect();
        for (index, _) in machine.nics() {
            if !used.contains(&index) {
                let _ = inst.set_link(index, false);
            }
        }
        for att in self.nics.attachments().iter().filter(|a| a.nic.is_some()) {
            nics::plug(&self.name, inst, att)?;
            nics::configure(&self.name, inst, att, true)?;
        }
        if !self.nics.attachments().is_empty() {
            nics::write_hosts(&self.name, inst, &self.nics)?;
        }
        Ok(())
    }

    /// Unplugs every NIC from its switch (the instance is going away).
    fn unplug_nics(&self) {
        for att in self.nics.attachments() {
            att.switch.remove_port(&self.name);
        }
    }

    /// The bridges this VM is attached to.
    pub fn attachments(&self) -> &[Attachment] {
        self.nics.attachments()
    }

    /// Attaches the VM to a bridge; a running guest is plugged in and
    /// configured at once, a VM that has not booted is when it boots.
    pub fn attach(&mut self, att: Attachment) -> Result<(), VmError> {
        let running = self.instance.is_some() && matches!(self.state, VmState::Booted | VmState::Paused);
        let machine = if running { self.running_as.as_ref().map(|m| m.machine.clone()) } else { None };
        self.nics.add(&self.name, att.clone(), machine.as_ref())?;
        if let (true, Some(inst)) = (running, &self.instance) {
            let att = self.nics.find(&att.bridge).expect("just added").clone();
            let r = nics::plug(&self.name, inst, &att).and_then(|()| {
                if self.state == VmState::Booted {
                    nics::configure(&self.name, inst, &att, true)?;
                }
                Ok(())
            });
            if let Err(e) = r {
                att.switch.remove_port(&self.name);
                self.nics.remove(&att.bridge);
                return Err(e.into());
            }
        }
        Ok(())
    }

    /// Detaches the VM from `bridge`: unplugged, link down, interface down.
    pub fn detach(&mut self, bridge: &str) -> Result<(), VmError> {
        let Some(att) = self.nics.remove(bridge) else { return Ok(()) };
        att.switch.remove_port(&self.name);
        if let (Some(inst), Some(nic)) = (&self.instance, att.nic) {
            let _ = inst.set_link(nic, false);
            if self.state == VmState::Booted {
                nics::configure(&self.name, inst, &att, false)?;
                nics::write_hosts(&self.name, inst, &self.nics)?;
            }
        }
        Ok(())
    }

    /// Sets or clears the default route through `bridge`'s uplink.
    pub fn set_gateway(&mut self, bridge: &str, gateway: Option<std::net::Ipv4Addr>) -> Result<(), VmError> {
        let Some(old) = self.nics.set_gateway(bridge, gateway) else { return Ok(()) };
        if self.state != VmState::Booted || self.instance.is_none() {
            return Ok(());
        }
        let change = match (old.gateway, gateway) {
            (_, Some(gw)) => Some((gw, true)),
            (Some(gw), None) => Some((gw, false)),
            (None, None) => None,
        };
        if let Some((gw, present)) = change {
            self.with_agent("uplink", |a| a.default_route(&gw.to_string(), present))?;
        }
        Ok(())
    }

    /// Pulls (`false`) or plugs back (`true`) the cable of the NIC on
    /// `bridge`: the switch drops its frames and the guest sees the link go.
    pub fn set_connected(&mut self, bridge: &str, connected: bool) -> Result<(), VmError> {
        let Some(att) = self.nics.set_connected(bridge, connected).cloned() else { return Ok(()) };
        att.switch.set_link(&self.name, connected);
        if let (Some(inst), Some(nic)) = (&self.instance, att.nic) {
            inst.set_link(nic, connected).map_err(|e| self.qmp_failed("set_link", e))?;
        }
        Ok(())
    }

    /// Rewrites provium's lines of the guest's `/etc/hosts` (a bridge's
    /// members changed); nothing to do unless the guest runs.
    pub fn refresh_hosts(&mut self) -> Result<(), VmError> {
        if let (VmState::Booted, Some(inst)) = (self.state, &self.instance) {
            nics::write_hosts(&self.name, inst, &self.nics)?;
        }
        Ok(())
    }

    /// Stops QEMU if it runs and puts the VM back in `created`, as if it
    /// had never booted (what a lab restore does to a VM that was not
    /// running when the lab was saved).
    pub fn forget_run(&mut self) {
        self.shutdown();
        self.state = VmState::Created;
        self.running_as = None;
    }

    /// Stops QEMU (from any state); idempotent.
    pub fn shutdown(&mut self) {
        self.unplug_nics();
        if let Some(inst) = self.instance.take() {
            self.last_console = inst.console_tail(vmm::CONSOLE_TAIL_BYTES);
            self.console_watch.carry(&inst.paths.console_log);
            self.stop_qemu(inst);
        }
        self.reservation = None;
        self.granted = None;
        self.kill_switch.disarm();
        // Handles opened on this run of the guest are dead now; a restored
        // guest starts with none.
        self.resources = Arc::default();
        if self.state != VmState::Dead {
            self.state = VmState::Shutdown;
        }
    }

    /// The last lines of the console (live, or as it was at shutdown).
    pub fn console_tail(&self, max_bytes: usize) -> String {
        match &self.instance {
            Some(i) => i.console_tail(max_bytes),
            None => {
                let s = &self.last_console;
                s[s.len().saturating_sub(max_bytes)..].to_string()
            }
        }
    }

    /// The agent connection, if the VM is booted.
    fn agent(&mut self, action: &'static str) -> Result<AgentClient, VmError> {
        match (self.state, &self.instance) {
            (VmState::Booted, Some(inst)) => Ok(inst.agent.clone()),
            _ => Err(self.wrong_state(action, Needs::Booted)),
        }
    }

    /// Maps an agent failure: OS errors stay per-operation; a lost
    /// connection means the VM died, which changes its state.
    pub(crate) fn failed(&mut self, op: &'static str, e: AgentError) -> VmError {
        match e {
            AgentError::Op(oe) if oe.kind == OpErrorKind::TimedOut => {
                VmError::TimedOut { vm: self.name.clone(), op, message: oe.message }
            }
            AgentError::Op(oe) if oe.kind == OpErrorKind::WorkerGone => {
                VmError::WorkerGone { vm: self.name.clone(), op, message: oe.message }
            }
            AgentError::Op(oe) => VmError::Os { vm: self.name.clone(), op, message: oe.message, errno: oe.errno },
            e if e.connection_lost() => {
                let why = match e {
                    AgentError::Disconnected(why) => why,
                    other => crate::errors::chain(&other),
                };
                self.lost(op, why)
            }
            other => VmError::Agent { vm: self.name.clone(), op, source: other },
        }
    }

    /// The guest went away during `op` (`why`: what the connection said):
    /// a guest that powered itself off leaves the VM `shutdown`; otherwise
    /// it died, and the error says how QEMU ended, with the console.
    pub(super) fn lost(&mut self, op: &'static str, why: String) -> VmError {
        if let Some(stopped) = self.stopped_by_provium(op) {
            return stopped;
        }
        let console = self.instance.as_ref().map(|i| i.console_tail(vmm::CONSOLE_TAIL_BYTES)).unwrap_or_default();
        let qemu_exit = self.instance.as_mut().and_then(|inst| {
            if !inst.qemu.wait_exit(Duration::from_millis(300)) {
                return None;
            }
            if super::nixos::power::guest_powered_off(inst) {
                return Some(Ok(()));
            }
            let status = inst.qemu.exit_status().map(|s| s.to_string()).unwrap_or_default();
            let after = super::nixos::power::why_qemu_exited(inst);
            let stderr = inst.qemu.stderr();
            Some(Err(if stderr.is_empty() {
                format!("QEMU exited ({status}){after}")
            } else {
                format!("QEMU exited ({status}){after}: {stderr}")
            }))
        });
        let why = match qemu_exit {
            Some(Ok(())) => return self.powered_off_during(op),
            Some(Err(exit)) => exit,
            None => why,
        };
        self.state = VmState::Dead;
        self.unplug_nics();
        if let Some(inst) = self.instance.take() {
            self.console_watch.carry(&inst.paths.console_log);
            self.stop_qemu(inst);
        }
        self.last_console = console.clone();
        self.kill_switch.disarm();
        VmError::Died { vm: self.name.clone(), op, why, console: vmm::format_console(&console) }
    }

    pub fn with_agent<T>(
        &mut self,
        op: &'static str,
        f: impl FnOnce(&AgentClient) -> Result<T, AgentError>,
    ) -> Result<T, VmError> {
        let agent = self.agent(op)?;
        f(&agent).map_err(|e| self.failed(op, e))
    }

    /// Closes the agent connection and reconnects (what a restore or a
    /// harness restart does to the port).
    pub fn reconnect_agent(&mut self) -> Result<(), VmError> {
        if self.state != VmState::Booted {
            return Err(self.wrong_state("reconnect", Needs::Booted));
        }
        // The same patience as a boot's: a loaded host slows the guest's
        // answer to the new session's Hello (CI saw 10 s run out).
        let timeout = self.create_opts.agent_timeout.unwrap_or(crate::image::DEFAULT_AGENT_TIMEOUT);
        let inst = self.instance.as_mut().expect("booted VM has an instance");
        inst.reconnect_agent(timeout).map_err(self.launch_failed("reconnect"))
    }

    /// The host end of NIC `index` of the running instance (a second
    /// handle on its socket), `None` when not running or no such NIC.
    pub fn nic_end(&self, index: u8) -> Option<std::io::Result<vmm::NicEnd>> {
        self.instance.as_ref()?.nic_end(index)
    }

    /// A clone of the live agent connection (for concurrent use).
    pub fn agent_client(&self) -> Option<AgentClient> {
        self.instance.as_ref().map(|i| i.agent.clone())
    }

    pub fn exec(&mut self, req: ExecRequest, stdin: &[u8]) -> Result<ExecOutput, VmError> {
        self.with_agent("run", |a| a.exec(req, stdin))
    }

    pub fn read_file(&mut self, path: &str) -> Result<Vec<u8>, VmError> {
        self.with_agent("read_file", |a| a.read_file(path))
    }

    pub fn write_file(&mut self, path: &str, data: &[u8], perm: u32) -> Result<(), VmError> {
        self.with_agent("write_file", |a| a.write_file(path, data, perm, false))
    }

    pub fn stat(&mut self, path: &str) -> Result<Metadata, VmError> {
        self.with_agent("stat", |a| a.stat(path, true))
    }

    pub fn listdir(&mut self, path: &str) -> Result<Vec<DirEntry>, VmError> {
        self.with_agent("listdir", |a| a.listdir(path))
    }

    pub fn mkdir(&mut self, path: &str, parents: bool, perm: u32) -> Result<(), VmError> {
        self.with_agent("mkdir", |a| a.mkdir(path, parents, perm))
    }

    pub fn unlink(&mut self, path: &str) -> Result<(), VmError> {
        self.with_agent("unlink", |a| a.unlink(path))
    }

    pub fn rename(&mut self, from: &str, to: &str) -> Result<(), VmError> {
        self.with_agent("rename", |a| a.rename(from, to))
    }

    pub fn ping(&mut self) -> Result<(), VmError> {
        self.with_agent("ping", |a| a.ping())
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        self.shutdown();
    }
}
