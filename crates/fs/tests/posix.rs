//! POSIX behaviour of the fs library, without a mount.

mod common;

use common::*;
use cowfs::{
    Caller, FallocMode, FileKind, Filesystem, OpenFlags, ROOT_INO, RenameFlags, SetAttr, TimeSet,
    Timespec, Whence, XATTR_CREATE, XATTR_REPLACE,
};

#[test]
fn data_survives_remount_and_checks_clean() {
    let (dev, fs) = new_fs();
    let c = root();
    let a = pattern(10_000, 1);
    let ino = put(&fs, ROOT_INO, b"a", &a, &c);
    let (f, fh) = fs.create(ROOT_INO, b"b", 0o600, rw(), &c).unwrap();
    fs.write(f.ino, fh, 5000, b"xyz", &c).unwrap();
    fs.write(f.ino, fh, 4094, b"edge", &c).unwrap();
    assert_eq!(fs.getattr(f.ino).unwrap().size, 5003);
    let got = fs.read(f.ino, fh, 0, 9000).unwrap();
    assert_eq!(got.len(), 5003);
    assert!(got[..4094].iter().all(|&b| b == 0));
    assert_eq!(&got[4094..4098], b"edge");
    assert_eq!(&got[5000..], b"xyz");
    fs.fsync(f.ino, fh, false).unwrap();
    fs.release(f.ino, fh).unwrap();
    assert_eq!(content(&fs, ino), a);
    assert_clean(&fs);
    fs.unmount().unwrap();
    let fs = Filesystem::open_device(dev, &opts()).unwrap();
    assert_eq!(content(&fs, ino), a);
    assert_eq!(&content(&fs, f.ino)[4094..4098], b"edge");
    assert_eq!(fs.lookup(ROOT_INO, b"a", &c).unwrap().ino, ino);
    assert_clean(&fs);
}

#[test]
fn sequential_writes_become_one_large_extent() {
    let (_dev, fs) = new_fs();
    let c = root();
    let (f, fh) = fs.create(ROOT_INO, b"big", 0o644, rw(), &c).unwrap();
    let chunk = pattern(65536, 3);
    for i in 0..64u64 {
        fs.write(f.ino, fh, i * 65536, &chunk, &c).unwrap();
    }
    fs.fsync(f.ino, fh, false).unwrap();
    let ins = fs.inspect().unwrap();
    let inode = ins.subvolumes[0]
        .inodes
        .iter()
        .find(|i| i.ino == f.ino)
        .unwrap();
    assert_eq!(inode.extents.len(), 1, "{ins}");
    assert_eq!(inode.extents[0].length, 4 << 20);
    assert!(inode.extents[0].crypt_context.is_none());
    assert!(inode.extents[0].physical.is_some());
    assert_eq!(fs.getattr(f.ino).unwrap().blocks, (4 << 20) / 512);
    // An overwrite in the middle goes to a new extent and splits the old item.
    fs.write(f.ino, fh, 8192, b"new data", &c).unwrap();
    fs.fsync(f.ino, fh, false).unwrap();
    let ins = fs.inspect().unwrap();
    let inode = ins.subvolumes[0]
        .inodes
        .iter()
        .find(|i| i.ino == f.ino)
        .unwrap();
    assert_eq!(inode.extents.len(), 3, "{ins}");
    assert_eq!(inode.extents[2].offset_in_extent, 12288);
    let json = serde_json::to_string(&ins).unwrap();
    assert!(json.contains("\"crypt_context\":null"));
    assert_eq!(
        fs.read(f.ino, fh, 8190, 12).unwrap(),
        [&chunk[8190..8192], b"new data", &chunk[8200..8202]].concat()
    );
    fs.release(f.ino, fh).unwrap();
    assert_clean(&fs);
}

#[test]
fn directories_list_with_stable_cookies() {
    let (_dev, fs) = new_fs();
    let c = root();
    let d = fs.mkdir(ROOT_INO, b"d", 0o755, &c).unwrap();
    assert_eq!(d.kind, FileKind::Dir);
    assert_eq!(fs.getattr(ROOT_INO).unwrap().nlink, 3);
    for i in 0..20 {
        put(&fs, d.ino, format!("f{i}").as_bytes(), b"", &c);
    }
    let fh = fs.opendir(d.ino, &c).unwrap();
    let first = fs.readdir(d.ino, fh, 0, 7).unwrap();
    assert_eq!(first[0].name, b".");
    assert_eq!(first[1].name, b"..");
    assert_eq!(first[1].ino, ROOT_INO);
    // Change the directory mid-listing: entries already seen go, new ones come.
    fs.unlink(d.ino, b"f0", &c).unwrap();
    fs.unlink(d.ino, b"f10", &c).unwrap();
    put(&fs, d.ino, b"late", b"", &c);
    let mut seen: Vec<Vec<u8>> = first.iter().map(|e| e.name.clone()).collect();
    let mut cookie = first.last().unwrap().cookie;
    loop {
        let es = fs.readdir(d.ino, fh, cookie, 5).unwrap();
        let Some(last) = es.last() else { break };
        cookie = last.cookie;
        seen.extend(es.into_iter().map(|e| e.name));
    }
    fs.releasedir(d.ino, fh).unwrap();
    // Every entry present throughout appears exactly once; f10 (removed before reached) not.
    for i in 1..20 {
        let n = format!("f{i}").into_bytes();
        let count = seen.iter().filter(|x| **x == n).count();
        assert_eq!(
            count,
            usize::from(i != 10),
            "{}",
            String::from_utf8_lossy(&n)
        );
    }
    assert!(seen.contains(&b"late".to_vec()));
    assert_eq!(errno(fs.rmdir(ROOT_INO, b"d", &c)), libc::ENOTEMPTY);
    assert_eq!(errno(fs.unlink(ROOT_INO, b"d", &c)), libc::EISDIR);
    assert_eq!(errno(fs.rmdir(d.ino, b"f1", &c)), libc::ENOTDIR);
    assert_eq!(errno(fs.mkdir(ROOT_INO, b"d", 0o755, &c)), libc::EEXIST);
    assert_eq!(errno(fs.lookup(ROOT_INO, b"nope", &c)), libc::ENOENT);
    assert_eq!(errno(fs.lookup(d.ino + 100, b"x", &c)), libc::ENOENT);
    let f1 = fs.lookup(d.ino, b"f1", &c).unwrap();
    assert_eq!(errno(fs.lookup(f1.ino, b"x", &c)), libc::ENOTDIR);
    assert_eq!(fs.lookup(d.ino, b"..", &c).unwrap().ino, ROOT_INO);
    let sub = fs.mkdir(d.ino, b"sub", 0o755, &c).unwrap();
    assert_eq!(fs.getattr(d.ino).unwrap().nlink, 3);
    fs.rmdir(d.ino, b"sub", &c).unwrap();
    assert_eq!(fs.getattr(d.ino).unwrap().nlink, 2);
    assert_eq!(errno(fs.getattr(sub.ino)), libc::ENOENT);
    assert_clean(&fs);
}

#[test]
fn names_over_255_bytes_are_refused_everywhere() {
    let (_dev, fs) = new_fs();
    let c = root();
    let long = vec![b'x'; 256];
    let max = vec![b'y'; 255];
    let f = put(&fs, ROOT_INO, &max, b"", &c);
    assert_eq!(fs.lookup(ROOT_INO, &max, &c).unwrap().ino, f);
    let e = libc::ENAMETOOLONG;
    assert_eq!(errno(fs.lookup(ROOT_INO, &long, &c)), e);
    assert_eq!(errno(fs.create(ROOT_INO, &long, 0o644, rw(), &c)), e);
    assert_eq!(errno(fs.mkdir(ROOT_INO, &long, 0o755, &c)), e);
    assert_eq!(
        errno(fs.mknod(ROOT_INO, &long, libc::S_IFIFO | 0o644, 0, &c)),
        e
    );
    assert_eq!(errno(fs.symlink(ROOT_INO, &long, b"t", &c)), e);
    assert_eq!(errno(fs.link(f, ROOT_INO, &long, &c)), e);
    assert_eq!(errno(fs.unlink(ROOT_INO, &long, &c)), e);
    assert_eq!(errno(fs.rmdir(ROOT_INO, &long, &c)), e);
    let none = RenameFlags::default();
    assert_eq!(
        errno(fs.rename(ROOT_INO, &long, ROOT_INO, b"z", none, &c)),
        e
    );
    assert_eq!(
        errno(fs.rename(ROOT_INO, &max, ROOT_INO, &long, none, &c)),
        e
    );
    assert_eq!(errno(fs.symlink(ROOT_INO, b"s", &vec![b'a'; 4096], &c)), e);
    let s = fs.symlink(ROOT_INO, b"s", &vec![b'a'; 4095], &c).unwrap();
    assert_eq!(fs.readlink(s.ino).unwrap().len(), 4095);
    assert_clean(&fs);
}

#[test]
fn rename_replaces_exchanges_and_refuses() {
    let (_dev, fs) = new_fs();
    let c = root();
    let none = RenameFlags::default();
    let noreplace = RenameFlags {
        noreplace: true,
        exchange: false,
    };
    let exchange = RenameFlags {
        noreplace: false,
        exchange: true,
    };
    let a = put(&fs, ROOT_INO, b"a", b"A", &c);
    let b = put(&fs, ROOT_INO, b"b", b"B", &c);
    let d1 = fs.mkdir(ROOT_INO, b"d1", 0o755, &c).unwrap().ino;
    let d2 = fs.mkdir(ROOT_INO, b"d2", 0o755, &c).unwrap().ino;
    let inner = fs.mkdir(d1, b"inner", 0o755, &c).unwrap().ino;
    assert_eq!(
        errno(fs.rename(ROOT_INO, b"a", ROOT_INO, b"b", noreplace, &c)),
        libc::EEXIST
    );
    assert_eq!(
        errno(fs.rename(ROOT_INO, b"a", ROOT_INO, b"d1", none, &c)),
        libc::EISDIR
    );
    assert_eq!(
        errno(fs.rename(ROOT_INO, b"d2", ROOT_INO, b"a", none, &c)),
        libc::ENOTDIR
    );
    assert_eq!(
        errno(fs.rename(ROOT_INO, b"d2", ROOT_INO, b"d1", none, &c)),
        libc::ENOTEMPTY
    );
    assert_eq!(
        errno(fs.rename(ROOT_INO, b"d1", inner, b"x", none, &c)),
        libc::EINVAL
    );
    assert_eq!(
        errno(fs.rename(ROOT_INO, b"a", ROOT_INO, b"zz", exchange, &c)),
        libc::ENOENT
    );
    let both = RenameFlags {
        noreplace: true,
        exchange: true,
    };
    assert_eq!(
        errno(fs.rename(ROOT_INO, b"a", ROOT_INO, b"b", both, &c)),
        libc::EINVAL
    );
    // Replace a file: the old target goes.
    fs.rename(ROOT_INO, b"a", ROOT_INO, b"b", none, &c).unwrap();
    assert_eq!(fs.lookup(ROOT_INO, b"b", &c).unwrap().ino, a);
    assert_eq!(errno(fs.getattr(b)), libc::ENOENT);
    // Exchange a file and a directory across parents: link counts and ".." follow.
    fs.rename(ROOT_INO, b"b", d1, b"inner", exchange, &c)
        .unwrap();
    assert_eq!(fs.lookup(ROOT_INO, b"b", &c).unwrap().ino, inner);
    assert_eq!(fs.lookup(d1, b"inner", &c).unwrap().ino, a);
    assert_eq!(fs.lookup(inner, b"..", &c).unwrap().ino, ROOT_INO);
    assert_eq!(fs.getattr(d1).unwrap().nlink, 2);
    assert_eq!(fs.getattr(ROOT_INO).unwrap().nlink, 5);
    // Move a directory over an empty one in another parent.
    fs.rename(ROOT_INO, b"b", d2, b"moved", none, &c).unwrap();
    let e = fs.mkdir(ROOT_INO, b"empty", 0o755, &c).unwrap().ino;
    fs.rename(d2, b"moved", ROOT_INO, b"empty", none, &c)
        .unwrap();
    assert_eq!(errno(fs.getattr(e)), libc::ENOENT);
    assert_eq!(fs.lookup(ROOT_INO, b"empty", &c).unwrap().ino, inner);
    assert_eq!(fs.getattr(d2).unwrap().nlink, 2);
    // Renaming onto another name of the same inode does nothing.
    fs.link(a, ROOT_INO, b"alias", &c).unwrap();
    fs.rename(d1, b"inner", ROOT_INO, b"alias", none, &c)
        .unwrap();
    assert_eq!(fs.getattr(a).unwrap().nlink, 2);
    assert_clean(&fs);
}

#[test]
fn hard_links_symlinks_and_special_files() {
    let (_dev, fs) = new_fs();
    let c = root();
    let f = put(&fs, ROOT_INO, b"f", b"data", &c);
    let l = fs.link(f, ROOT_INO, b"g", &c).unwrap();
    assert_eq!(l.ino, f);
    assert_eq!(l.nlink, 2);
    fs.unlink(ROOT_INO, b"f", &c).unwrap();
    assert_eq!(fs.getattr(f).unwrap().nlink, 1);
    assert_eq!(content(&fs, f), b"data");
    let d = fs.mkdir(ROOT_INO, b"d", 0o755, &c).unwrap();
    assert_eq!(errno(fs.link(d.ino, ROOT_INO, b"dl", &c)), libc::EPERM);
    assert_eq!(errno(fs.link(f, ROOT_INO, b"g", &c)), libc::EEXIST);
    let masked = cowfs::Caller {
        umask: 0o077,
        ..c.clone()
    };
    let s = fs.symlink(ROOT_INO, b"s", b"../target", &masked).unwrap();
    assert_eq!(s.perm, 0o777);
    assert_eq!(s.kind, FileKind::Symlink);
    assert_eq!(s.size, 9);
    assert_eq!(fs.readlink(s.ino).unwrap(), b"../target");
    assert_eq!(errno(fs.readlink(f)), libc::EINVAL);
    assert_eq!(errno(fs.symlink(ROOT_INO, b"e", b"", &c)), libc::ENOENT);
    let fifo = fs
        .mknod(ROOT_INO, b"fifo", libc::S_IFIFO | 0o640, 0, &c)
        .unwrap();
    assert_eq!((fifo.kind, fifo.perm), (FileKind::Fifo, 0o640));
    let fh = fs.open(fifo.ino, rw(), &c).unwrap();
    assert_eq!(errno(fs.write(fifo.ino, fh, 0, b"x", &c)), libc::EINVAL);
    assert_eq!(errno(fs.read(fifo.ino, fh, 0, 1)), libc::EINVAL);
    fs.release(fifo.ino, fh).unwrap();
    let sock = fs
        .mknod(ROOT_INO, b"sock", libc::S_IFSOCK | 0o600, 0, &c)
        .unwrap();
    assert_eq!(sock.kind, FileKind::Socket);
    let chr = fs
        .mknod(ROOT_INO, b"null", libc::S_IFCHR | 0o666, 0x0103, &c)
        .unwrap();
    assert_eq!((chr.kind, chr.rdev), (FileKind::CharDev, 0x0103));
    let blk = fs
        .mknod(ROOT_INO, b"blk", libc::S_IFBLK | 0o600, 0x0801, &c)
        .unwrap();
    assert_eq!(blk.kind, FileKind::BlockDev);
    let alice = user(1000, 1000, &[]);
    fs.setattr(
        ROOT_INO,
        &SetAttr {
            mode: Some(0o777),
            ..SetAttr::default()
        },
        None,
        &c,
    )
    .unwrap();
    assert_eq!(
        errno(fs.mknod(ROOT_INO, b"c2", libc::S_IFCHR | 0o666, 1, &alice)),
        libc::EPERM
    );
    let reg = fs
        .mknod(ROOT_INO, b"reg", libc::S_IFREG | 0o644, 0, &alice)
        .unwrap();
    assert_eq!((reg.kind, reg.uid), (FileKind::File, 1000));
    assert_clean(&fs);
}

#[test]
fn permission_bits_sticky_and_ownership() {
    let (_dev, fs) = new_fs();
    let c = root();
    let alice = user(1000, 1000, &[]);
    let bob = user(1001, 1001, &[50]);
    fs.setattr(
        ROOT_INO,
        &SetAttr {
            mode: Some(0o1777),
            ..SetAttr::default()
        },
        None,
        &c,
    )
    .unwrap();
    let (f, fh) = fs.create(ROOT_INO, b"alice", 0o600, rw(), &alice).unwrap();
    fs.release(f.ino, fh).unwrap();
    assert_eq!((f.uid, f.gid), (1000, 1000));
    assert_eq!(
        errno(fs.open(f.ino, OpenFlags(libc::O_RDONLY), &bob)),
        libc::EACCES
    );
    assert_eq!(errno(fs.access(f.ino, libc::R_OK, &bob)), libc::EACCES);
    fs.access(f.ino, libc::R_OK | libc::W_OK, &alice).unwrap();
    // Sticky directory: bob may not remove or rename alice's file.
    assert_eq!(errno(fs.unlink(ROOT_INO, b"alice", &bob)), libc::EPERM);
    let none = RenameFlags::default();
    assert_eq!(
        errno(fs.rename(ROOT_INO, b"alice", ROOT_INO, b"x", none, &bob)),
        libc::EPERM
    );
    // A 0755 directory of alice's: bob may not create in it.
    let d = fs.mkdir(ROOT_INO, b"ad", 0o755, &alice).unwrap();
    assert_eq!(
        errno(fs.create(d.ino, b"b", 0o644, rw(), &bob)),
        libc::EACCES
    );
    let inner = put(&fs, d.ino, b"in", b"", &alice);
    assert_eq!(errno(fs.unlink(d.ino, b"in", &bob)), libc::EACCES);
    // Search permission: a 0700 directory hides its entries.
    fs.setattr(
        d.ino,
        &SetAttr {
            mode: Some(0o700),
            ..SetAttr::default()
        },
        None,
        &alice,
    )
    .unwrap();
    assert_eq!(errno(fs.lookup(d.ino, b"in", &bob)), libc::EACCES);
    assert_eq!(fs.lookup(d.ino, b"in", &c).unwrap().ino, inner);
    // chmod and chown rules.
    let set_mode = |m| SetAttr {
        mode: Some(m),
        ..SetAttr::default()
    };
    assert_eq!(
        errno(fs.setattr(f.ino, &set_mode(0o644), None, &bob)),
        libc::EPERM
    );
    let chown = |u: Option<u32>, g: Option<u32>| SetAttr {
        uid: u,
        gid: g,
        ..SetAttr::default()
    };
    assert_eq!(
        errno(fs.setattr(f.ino, &chown(Some(1001), None), None, &alice)),
        libc::EPERM
    );
    assert_eq!(
        errno(fs.setattr(f.ino, &chown(None, Some(50)), None, &alice)),
        libc::EPERM
    );
    let alice50 = user(1000, 1000, &[50]);
    assert_eq!(
        fs.setattr(f.ino, &chown(None, Some(50)), None, &alice50)
            .unwrap()
            .gid,
        50
    );
    // Setting setgid without being in the file's group clears it.
    let a = fs.setattr(f.ino, &set_mode(0o2755), None, &alice).unwrap();
    assert_eq!(a.perm, 0o755);
    // chown clears setuid (and setgid with group exec), even for root.
    fs.setattr(f.ino, &set_mode(0o6755), None, &c).unwrap();
    let a = fs
        .setattr(f.ino, &chown(Some(1001), Some(1001)), None, &c)
        .unwrap();
    assert_eq!((a.uid, a.perm), (1001, 0o755));
    // A write by a non-root caller clears setuid.
    fs.setattr(f.ino, &set_mode(0o4666), None, &c).unwrap();
    let fh = fs.open(f.ino, rw(), &alice).unwrap();
    fs.write(f.ino, fh, 0, b"x", &alice).unwrap();
    fs.release(f.ino, fh).unwrap();
    assert_eq!(fs.getattr(f.ino).unwrap().perm, 0o666);
    // utimes: explicit times only by the owner; "now" by anyone who may write.
    let t = Timespec {
        sec: 1_000_000,
        nsec: 123_456_789,
    };
    let times = SetAttr {
        atime: Some(TimeSet::At(t)),
        mtime: Some(TimeSet::At(t)),
        ..SetAttr::default()
    };
    assert_eq!(errno(fs.setattr(f.ino, &times, None, &alice)), libc::EPERM);
    let now = SetAttr {
        atime: Some(TimeSet::Now),
        mtime: Some(TimeSet::Now),
        ..SetAttr::default()
    };
    fs.setattr(f.ino, &now, None, &alice).unwrap();
    let a = fs.setattr(f.ino, &times, None, &c).unwrap();
    assert_eq!(a.mtime, t);
    // umask and setgid directories.
    let masked = Caller {
        umask: 0o027,
        ..alice.clone()
    };
    let g = fs.mkdir(ROOT_INO, b"g", 0o777, &masked).unwrap();
    assert_eq!(g.perm, 0o750);
    fs.setattr(
        g.ino,
        &SetAttr {
            mode: Some(0o2777),
            gid: Some(50),
            ..SetAttr::default()
        },
        None,
        &c,
    )
    .unwrap();
    let sub = fs.mkdir(g.ino, b"sub", 0o755, &bob).unwrap();
    assert_eq!((sub.gid, sub.perm & 0o2000), (50, 0o2000));
    let file = fs
        .mknod(g.ino, b"file", libc::S_IFREG | 0o644, 0, &bob)
        .unwrap();
    assert_eq!(file.gid, 50);
    // Root may read anything but execute only what someone may execute.
    fs.access(f.ino, libc::R_OK | libc::W_OK, &c).unwrap();
    assert_eq!(errno(fs.access(f.ino, libc::X_OK, &c)), libc::EACCES);
    assert_clean(&fs);
}

fn acl_bytes(entries: &[(u16, u16, u32)]) -> Vec<u8> {
    let mut v = 2u32.to_le_bytes().to_vec();
    for &(tag, perm, id) in entries {
        v.extend_from_slice(&tag.to_le_bytes());
        v.extend_from_slice(&perm.to_le_bytes());
        v.extend_from_slice(&id.to_le_bytes());
    }
    v
}

#[test]
fn posix_acls_are_enforced_and_inherited() {
    let (_dev, fs) = new_fs();
    let c = root();
    let alice = user(1000, 1000, &[]);
    let bob = user(1001, 1001, &[]);
    let carol = user(1002, 1002, &[]);
    fs.setattr(
        ROOT_INO,
        &SetAttr {
            mode: Some(0o777),
            ..SetAttr::default()
        },
        None,
        &c,
    )
    .unwrap();
    let (f, fh) = fs.create(ROOT_INO, b"f", 0o600, rw(), &alice).unwrap();
    fs.release(f.ino, fh).unwrap();
    // user::rw- user:bob:rw- group::--- mask::rw- other::---
    let acl = acl_bytes(&[
        (1, 6, u32::MAX),
        (2, 6, 1001),
        (4, 0, u32::MAX),
        (0x10, 6, u32::MAX),
        (0x20, 0, u32::MAX),
    ]);
    assert_eq!(
        errno(fs.setxattr(f.ino, b"system.posix_acl_access", &acl, 0, &bob)),
        libc::EPERM
    );
    fs.setxattr(f.ino, b"system.posix_acl_access", &acl, 0, &alice)
        .unwrap();
    assert_eq!(
        fs.getattr(f.ino).unwrap().perm,
        0o660,
        "group bits show the mask"
    );
    assert_eq!(
        fs.getxattr(f.ino, b"system.posix_acl_access", &carol)
            .unwrap(),
        acl
    );
    let fh = fs.open(f.ino, rw(), &bob).unwrap();
    fs.release(f.ino, fh).unwrap();
    assert_eq!(
        errno(fs.open(f.ino, OpenFlags(libc::O_RDONLY), &carol)),
        libc::EACCES
    );
    // chmod narrows the mask: bob keeps read only.
    fs.setattr(
        f.ino,
        &SetAttr {
            mode: Some(0o640),
            ..SetAttr::default()
        },
        None,
        &alice,
    )
    .unwrap();
    fs.access(f.ino, libc::R_OK, &bob).unwrap();
    assert_eq!(errno(fs.access(f.ino, libc::W_OK, &bob)), libc::EACCES);
    // A minimal ACL is just the mode: nothing stored.
    let minimal = acl_bytes(&[(1, 7, 0), (4, 5, 0), (0x20, 4, 0)]);
    fs.setxattr(f.ino, b"system.posix_acl_access", &minimal, 0, &alice)
        .unwrap();
    assert_eq!(fs.getattr(f.ino).unwrap().perm, 0o754);
    assert_eq!(
        errno(fs.getxattr(f.ino, b"system.posix_acl_access", &alice)),
        libc::ENODATA
    );
    // Malformed ACLs are refused.
    assert_eq!(
        errno(fs.setxattr(
            f.ino,
            b"system.posix_acl_access",
            &[2, 0, 0, 0, 1],
            0,
            &alice
        )),
        libc::EINVAL
    );
    // Default ACL: inherited by new files (no umask) and directories.
    let d = fs.mkdir(ROOT_INO, b"d", 0o755, &alice).unwrap();
    let u = u32::MAX; // ACL_UNDEFINED_ID, what Linux writes for unnamed entries
    let def = acl_bytes(&[
        (1, 7, u),
        (2, 7, 1001),
        (4, 5, u),
        (0x10, 7, u),
        (0x20, 0, u),
    ]);
    assert_eq!(
        errno(fs.setxattr(f.ino, b"system.posix_acl_default", &def, 0, &alice)),
        libc::EACCES
    );
    fs.setxattr(d.ino, b"system.posix_acl_default", &def, 0, &alice)
        .unwrap();
    let masked = Caller {
        umask: 0o077,
        ..alice.clone()
    };
    let (nf, fh) = fs.create(d.ino, b"new", 0o664, rw(), &masked).unwrap();
    fs.release(nf.ino, fh).unwrap();
    assert_eq!(nf.perm, 0o660, "mode from the ACL, not the umask");
    fs.access(nf.ino, libc::R_OK | libc::W_OK, &bob).unwrap();
    let sub = fs.mkdir(d.ino, b"sub", 0o777, &masked).unwrap();
    assert_eq!(
        fs.getxattr(sub.ino, b"system.posix_acl_default", &alice)
            .unwrap(),
        def
    );
    assert!(
        fs.getxattr(sub.ino, b"system.posix_acl_access", &alice)
            .is_ok()
    );
    assert_clean(&fs);
}

#[test]
fn xattrs_follow_linux_namespace_rules() {
    let (dev, fs) = new_fs();
    let c = root();
    let alice = user(1000, 1000, &[]);
    let bob = user(1001, 1001, &[]);
    fs.setattr(
        ROOT_INO,
        &SetAttr {
            mode: Some(0o777),
            ..SetAttr::default()
        },
        None,
        &c,
    )
    .unwrap();
    let f = put(&fs, ROOT_INO, b"f", b"", &alice);
    fs.setxattr(f, b"user.a", b"1", 0, &alice).unwrap();
    fs.setxattr(f, b"user.b", &[7u8; 2000], 0, &alice).unwrap();
    assert_eq!(
        errno(fs.setxattr(f, b"user.a", b"2", XATTR_CREATE, &alice)),
        libc::EEXIST
    );
    assert_eq!(
        errno(fs.setxattr(f, b"user.c", b"2", XATTR_REPLACE, &alice)),
        libc::ENODATA
    );
    fs.setxattr(f, b"user.a", b"22", XATTR_REPLACE, &alice)
        .unwrap();
    assert_eq!(fs.getxattr(f, b"user.a", &bob).unwrap(), b"22");
    assert_eq!(
        errno(fs.setxattr(f, b"user.a", b"3", 0, &bob)),
        libc::EACCES
    );
    assert_eq!(
        errno(fs.setxattr(f, b"trusted.t", b"3", 0, &alice)),
        libc::EPERM
    );
    fs.setxattr(f, b"trusted.t", b"3", 0, &c).unwrap();
    assert_eq!(errno(fs.getxattr(f, b"trusted.t", &alice)), libc::ENODATA);
    assert_eq!(
        fs.listxattr(f, &alice).unwrap(),
        vec![b"user.a".to_vec(), b"user.b".to_vec()]
    );
    assert_eq!(fs.listxattr(f, &c).unwrap().len(), 3);
    assert_eq!(
        errno(fs.setxattr(f, b"bogus.x", b"", 0, &c)),
        libc::EOPNOTSUPP
    );
    assert_eq!(errno(fs.getxattr(f, b"user.none", &c)), libc::ENODATA);
    assert_eq!(errno(fs.removexattr(f, b"user.none", &c)), libc::ENODATA);
    fs.removexattr(f, b"user.b", &alice).unwrap();
    assert_eq!(
        errno(fs.setxattr(f, &[b'u'; 256], b"", 0, &c)),
        libc::ERANGE
    );
    // user.* is for files and directories only.
    let s = fs.symlink(ROOT_INO, b"s", b"f", &c).unwrap();
    assert_eq!(
        errno(fs.setxattr(s.ino, b"user.x", b"", 0, &c)),
        libc::EPERM
    );
    fs.unmount().unwrap();
    let fs = Filesystem::open_device(dev, &opts()).unwrap();
    assert_eq!(fs.getxattr(f, b"user.a", &c).unwrap(), b"22");
    assert_eq!(fs.getxattr(f, b"trusted.t", &c).unwrap(), b"3");
    assert_clean(&fs);
}

#[test]
fn truncate_fallocate_and_seek() {
    let (_dev, fs) = new_fs();
    let c = root();
    let (f, fh) = fs.create(ROOT_INO, b"f", 0o644, rw(), &c).unwrap();
    let ino = f.ino;
    let data = pattern(20_000, 9);
    fs.write(ino, fh, 0, &data, &c).unwrap();
    fs.fsync(ino, fh, false).unwrap();
    // Shrink into the middle of a block, then grow: the tail reads as zeros.
    fs.setattr(
        ino,
        &SetAttr {
            size: Some(5000),
            ..SetAttr::default()
        },
        Some(fh),
        &c,
    )
    .unwrap();
    fs.setattr(
        ino,
        &SetAttr {
            size: Some(12000),
            ..SetAttr::default()
        },
        None,
        &c,
    )
    .unwrap();
    let got = fs.read(ino, fh, 0, 20000).unwrap();
    assert_eq!(got.len(), 12000);
    assert_eq!(&got[..5000], &data[..5000]);
    assert!(got[5000..].iter().all(|&b| b == 0));
    // Sparse: data at 0 and at 1 MiB.
    fs.write(ino, fh, 1 << 20, b"far", &c).unwrap();
    let size = (1 << 20) + 3;
    assert_eq!(fs.lseek(ino, fh, 0, Whence::Data).unwrap(), 0);
    assert_eq!(fs.lseek(ino, fh, 0, Whence::Hole).unwrap(), 8192);
    assert_eq!(fs.lseek(ino, fh, 9000, Whence::Data).unwrap(), 1 << 20);
    assert_eq!(
        fs.lseek(ino, fh, (1 << 20) + 1, Whence::Hole).unwrap(),
        size
    );
    assert_eq!(errno(fs.lseek(ino, fh, size, Whence::Data)), libc::ENXIO);
    assert_eq!(
        errno(fs.lseek(ino, fh, size + 5, Whence::Hole)),
        libc::ENXIO
    );
    // Punch a hole through data: zeros, and SEEK_HOLE finds it.
    fs.write(ino, fh, 0, &data, &c).unwrap();
    let punch = FallocMode {
        punch_hole: true,
        keep_size: true,
        zero_range: false,
    };
    fs.fallocate(ino, fh, 1000, 10000, punch, &c).unwrap();
    let got = fs.read(ino, fh, 0, 20000).unwrap();
    assert_eq!(&got[..1000], &data[..1000]);
    assert!(got[1000..11000].iter().all(|&b| b == 0));
    assert_eq!(&got[11000..20000], &data[11000..20000]);
    assert_eq!(fs.lseek(ino, fh, 0, Whence::Hole).unwrap(), 4096);
    assert_eq!(fs.lseek(ino, fh, 4096, Whence::Data).unwrap(), 8192);
    let bad = FallocMode {
        punch_hole: true,
        ..FallocMode::default()
    };
    assert_eq!(
        errno(fs.fallocate(ino, fh, 0, 10, bad, &c)),
        libc::EOPNOTSUPP
    );
    // Zero range.
    let zero = FallocMode {
        zero_range: true,
        ..FallocMode::default()
    };
    fs.fallocate(ino, fh, 15000, 3000, zero, &c).unwrap();
    let got = fs.read(ino, fh, 14000, 6000).unwrap();
    assert_eq!(&got[..1000], &data[14000..15000]);
    assert!(got[1000..4000].iter().all(|&b| b == 0));
    assert_eq!(&got[4000..], &data[18000..20000]);
    // Allocate past the end: the size grows unless KEEP_SIZE.
    let (g, gh) = fs.create(ROOT_INO, b"g", 0o644, rw(), &c).unwrap();
    fs.fallocate(g.ino, gh, 0, 100_000, FallocMode::default(), &c)
        .unwrap();
    let a = fs.getattr(g.ino).unwrap();
    assert_eq!(a.size, 100_000);
    assert!(a.blocks >= 100_000 / 512);
    let keep = FallocMode {
        keep_size: true,
        ..FallocMode::default()
    };
    fs.fallocate(g.ino, gh, 100_000, 50_000, keep, &c).unwrap();
    assert_eq!(fs.getattr(g.ino).unwrap().size, 100_000);
    assert!(
        fs.read(g.ino, gh, 0, 200_000)
            .unwrap()
            .iter()
            .all(|&b| b == 0)
    );
    fs.write(g.ino, gh, 5, b"inside", &c).unwrap();
    assert_eq!(fs.read(g.ino, gh, 0, 11).unwrap(), b"\0\0\0\0\0inside");
    fs.release(g.ino, gh).unwrap();
    fs.release(ino, fh).unwrap();
    assert_clean(&fs);
}

#[test]
fn append_handles_write_at_the_end() {
    let (_dev, fs) = new_fs();
    let c = root();
    let f = put(&fs, ROOT_INO, b"log", b"start\n", &c);
    let h1 = fs
        .open(f, OpenFlags(libc::O_WRONLY | libc::O_APPEND), &c)
        .unwrap();
    let h2 = fs
        .open(f, OpenFlags(libc::O_WRONLY | libc::O_APPEND), &c)
        .unwrap();
    fs.write(f, h1, 0, b"one\n", &c).unwrap();
    fs.write(f, h2, 0, b"two\n", &c).unwrap();
    assert_eq!(errno(fs.read(f, h1, 0, 10)), libc::EBADF);
    fs.release(f, h1).unwrap();
    fs.release(f, h2).unwrap();
    assert_eq!(content(&fs, f), b"start\none\ntwo\n");
    let h = fs
        .open(f, OpenFlags(libc::O_RDWR | libc::O_TRUNC), &c)
        .unwrap();
    assert_eq!(fs.getattr(f).unwrap().size, 0);
    fs.release(f, h).unwrap();
    assert_clean(&fs);
}

#[test]
fn unlinked_open_files_live_until_released() {
    let (dev, fs) = new_fs();
    let c = root();
    let (f, fh) = fs.create(ROOT_INO, b"tmp", 0o644, rw(), &c).unwrap();
    fs.write(f.ino, fh, 0, b"still here", &c).unwrap();
    fs.unlink(ROOT_INO, b"tmp", &c).unwrap();
    assert_eq!(fs.read(f.ino, fh, 0, 100).unwrap(), b"still here");
    assert_eq!(fs.getattr(f.ino).unwrap().nlink, 0);
    let r = fs.check().unwrap();
    assert!(r.is_clean(), "{r}");
    assert_eq!(r.orphans, 1);
    fs.release(f.ino, fh).unwrap();
    assert_eq!(errno(fs.getattr(f.ino)), libc::ENOENT);
    assert_eq!(fs.check().unwrap().orphans, 0);
    // A "crash" with an unlinked file open: the next open removes it.
    let (g, gh) = fs.create(ROOT_INO, b"tmp2", 0o644, rw(), &c).unwrap();
    fs.write(g.ino, gh, 0, &pattern(50_000, 2), &c).unwrap();
    fs.unlink(ROOT_INO, b"tmp2", &c).unwrap();
    fs.sync().unwrap();
    let image = store::MemDevice::from_bytes(snapshot(&dev));
    drop(fs);
    let dev2: std::sync::Arc<dyn store::BlockDevice> = std::sync::Arc::new(image);
    let fs = Filesystem::open_device(dev2, &opts()).unwrap();
    assert_eq!(errno(fs.getattr(g.ino)), libc::ENOENT);
    let r = fs.check().unwrap();
    assert!(r.is_clean() && r.orphans == 0, "{r}");
}

fn snapshot(dev: &std::sync::Arc<dyn store::BlockDevice>) -> Vec<u8> {
    let mut buf = vec![0u8; dev.size() as usize];
    dev.read_at(&mut buf, 0).unwrap();
    buf
}

#[test]
fn nanosecond_times_statfs_and_copy() {
    let (dev, fs) = new_fs();
    let c = root();
    let f = put(&fs, ROOT_INO, b"f", &pattern(100_000, 4), &c);
    let t = Timespec {
        sec: 1_700_000_000,
        nsec: 987_654_321,
    };
    fs.setattr(
        f,
        &SetAttr {
            mtime: Some(TimeSet::At(t)),
            ..SetAttr::default()
        },
        None,
        &c,
    )
    .unwrap();
    let st = fs.statfs().unwrap();
    assert_eq!((st.bsize, st.namelen), (4096, 255));
    assert!(st.blocks > st.bfree && st.bfree > 0);
    let (g, gh) = fs.create(ROOT_INO, b"g", 0o644, rw(), &c).unwrap();
    let fh = fs.open(f, OpenFlags(libc::O_RDONLY), &c).unwrap();
    assert_eq!(
        fs.copy_file_range(f, fh, 10, g.ino, gh, 0, 1 << 20, &c)
            .unwrap(),
        99_990
    );
    fs.release(f, fh).unwrap();
    fs.release(g.ino, gh).unwrap();
    assert_eq!(content(&fs, g.ino), pattern(100_000, 4)[10..]);
    fs.unmount().unwrap();
    let fs = Filesystem::open_device(dev, &opts()).unwrap();
    assert_eq!(fs.getattr(f).unwrap().mtime, t);
    assert!(fs.statfs().unwrap().bfree < st.bfree);
    assert_clean(&fs);
}

#[test]
fn image_files_and_read_only_opens() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("img");
    Filesystem::mkfs_image(&path, 32 << 20, &cowfs::MkfsOptions::default()).unwrap();
    let fs = Filesystem::open_image(&path, &opts()).unwrap();
    let f = put(&fs, ROOT_INO, b"f", b"on disk", &root());
    fs.unmount().unwrap();
    let ro = cowfs::OpenOptions {
        read_only: true,
        ..opts()
    };
    let fs = Filesystem::open_image(&path, &ro).unwrap();
    assert_eq!(content(&fs, f), b"on disk");
    assert_eq!(errno(fs.mkdir(ROOT_INO, b"d", 0o755, &root())), libc::EROFS);
    assert_eq!(errno(fs.access(f, libc::W_OK, &root())), libc::EROFS);
    assert_clean(&fs);
}

#[test]
fn check_lists_every_fault() {
    use cowfs::items::{InodeItem, name_hash, ty};
    use store::{Key, Store};
    let (dev, fs) = new_fs();
    let c = root();
    let f = put(&fs, ROOT_INO, b"f", b"x", &c);
    let g = put(&fs, ROOT_INO, b"g", &pattern(9000, 1), &c);
    fs.unmount().unwrap();
    // Damage two things behind the filesystem's back: a name without its index, and a wrong
    // link count.
    let store = Store::open(dev.clone()).unwrap();
    let mut t = store.begin().unwrap();
    let dir_item = Key::new(1, ty::DIR_ITEM, name_hash(b"f"));
    assert!(t.get(256, &dir_item).unwrap().is_some());
    let idx: Vec<Key> = t
        .range(
            256,
            Key::new(1, ty::DIR_INDEX, 0)..=Key::new(1, ty::DIR_INDEX, u64::MAX),
        )
        .unwrap()
        .map(|r| r.unwrap().0)
        .collect();
    assert_eq!(idx.len(), 2);
    t.delete(256, &idx[0]).unwrap();
    let key = Key::new(g, ty::INODE, 0);
    let mut it = InodeItem::decode(&key, &t.get(256, &key).unwrap().unwrap()).unwrap();
    it.nlink = 5;
    t.insert(256, key, &it.encode()).unwrap();
    t.commit().unwrap();
    drop(store);
    let fs = Filesystem::open_device(dev, &opts()).unwrap();
    let r = fs.check().unwrap();
    assert!(!r.is_clean());
    let text = r.to_string();
    assert!(text.contains("has no matching index"), "{text}");
    assert!(
        text.contains(&format!("inode {g}: link count 5, expected 1")),
        "{text}"
    );
    assert!(r.faults.len() >= 3, "{text}");
    let _ = f;
}

#[test]
fn kernel_lookups_keep_unlinked_inodes_until_forgotten() {
    let dev = new_dev(32 * MIB);
    let o = cowfs::OpenOptions {
        lookup_counts: true,
        ..opts()
    };
    let fs = Filesystem::open_device(dev, &o).unwrap();
    let c = root();
    let f = put(&fs, ROOT_INO, b"f", b"kept", &c); // create: one lookup
    fs.lookup(ROOT_INO, b"f", &c).unwrap(); // two
    fs.unlink(ROOT_INO, b"f", &c).unwrap();
    assert_eq!(fs.getattr(f).unwrap().nlink, 0);
    fs.forget(f, 1);
    assert_eq!(content(&fs, f), b"kept");
    fs.forget(f, 1);
    assert_eq!(errno(fs.getattr(f)), libc::ENOENT);
    // readdirplus counts a lookup for every entry but "." and "..".
    let g = put(&fs, ROOT_INO, b"g", b"", &c);
    fs.forget(g, 1);
    let dh = fs.opendir(ROOT_INO, &c).unwrap();
    let es = fs.readdirplus(ROOT_INO, dh, 0, 10).unwrap();
    fs.releasedir(ROOT_INO, dh).unwrap();
    assert_eq!(es.len(), 3);
    assert_eq!((es[2].0.ino, es[2].1.size), (g, 0));
    fs.unlink(ROOT_INO, b"g", &c).unwrap();
    assert!(fs.getattr(g).is_ok(), "kept by the readdirplus lookup");
    fs.forget(g, 1);
    assert_eq!(errno(fs.getattr(g)), libc::ENOENT);
    assert_clean(&fs);
}

#[test]
fn full_data_space_gives_enospc_and_recovers() {
    let dev = new_dev(16 * MIB);
    let fs = Filesystem::open_device(dev, &opts()).unwrap();
    let c = root();
    let (f, fh) = fs.create(ROOT_INO, b"fill", 0o644, rw(), &c).unwrap();
    let chunk = pattern(256 << 10, 5);
    let mut off = 0u64;
    let err = loop {
        match fs.write(f.ino, fh, off, &chunk, &c) {
            Ok(n) => off += u64::from(n),
            Err(e) => break e,
        }
        assert!(off < 64 << 20, "never ran out");
    };
    assert_eq!(err.errno(), libc::ENOSPC);
    fs.fsync(f.ino, fh, false).unwrap();
    assert_eq!(fs.getattr(f.ino).unwrap().size, off);
    fs.release(f.ino, fh).unwrap();
    assert_eq!(content(&fs, f.ino).len() as u64, off);
    fs.unlink(ROOT_INO, b"fill", &c).unwrap();
    fs.sync().unwrap();
    put(&fs, ROOT_INO, b"after", &chunk, &c);
    assert_clean(&fs);
}

#[test]
fn dirty_data_is_bounded_and_committed_in_the_background() {
    let dev = new_dev(64 * MIB);
    let o = cowfs::OpenOptions {
        max_dirty_bytes: 1 << 20,
        commit_interval: std::time::Duration::from_millis(50),
        ..opts()
    };
    let fs = Filesystem::open_device(dev.clone(), &o).unwrap();
    let c = root();
    let (f, fh) = fs.create(ROOT_INO, b"f", 0o644, rw(), &c).unwrap();
    let data = pattern(3 << 20, 8);
    for (i, piece) in data.chunks(100_000).enumerate() {
        fs.write(f.ino, fh, i as u64 * 100_000, piece, &c).unwrap();
    }
    std::thread::sleep(std::time::Duration::from_millis(400));
    // No fsync: the periodic commit made it durable. Open a copy of the device as it is now.
    let mut image = vec![0u8; dev.size() as usize];
    dev.read_at(&mut image, 0).unwrap();
    let copy: std::sync::Arc<dyn store::BlockDevice> =
        std::sync::Arc::new(store::MemDevice::from_bytes(image));
    let fs2 = Filesystem::open_device(copy, &opts()).unwrap();
    assert_eq!(content(&fs2, f.ino), data);
    let ins = fs2.inspect().unwrap();
    let inode = ins.subvolumes[0]
        .inodes
        .iter()
        .find(|i| i.ino == f.ino)
        .unwrap();
    assert!(
        inode.extents.len() >= 3,
        "flushed at the 1 MiB bound: {ins}"
    );
    assert_clean(&fs2);
    fs.release(f.ino, fh).unwrap();
}

#[test]
fn threads_share_one_filesystem() {
    let (_dev, fs) = new_fs();
    let fs = std::sync::Arc::new(fs);
    let workers: Vec<_> = (0..4u8)
        .map(|t| {
            let fs = fs.clone();
            std::thread::spawn(move || {
                let c = root();
                let d = fs
                    .mkdir(ROOT_INO, format!("t{t}").as_bytes(), 0o755, &c)
                    .unwrap();
                for i in 0..20u8 {
                    let data = pattern(1000 + usize::from(i) * 500, t ^ i);
                    let f = put(&fs, d.ino, format!("f{i}").as_bytes(), &data, &c);
                    assert_eq!(content(&fs, f), data);
                    if i % 3 == 0 {
                        fs.unlink(d.ino, format!("f{i}").as_bytes(), &c).unwrap();
                    }
                }
                fs.sync().unwrap();
                d.ino
            })
        })
        .collect();
    for w in workers {
        let d = w.join().unwrap();
        assert_eq!(names(&fs, d).len(), 2 + 13);
    }
    assert_eq!(
        errno(fs.mknod(ROOT_INO, b"bad", 0o170644, 0, &root())),
        libc::EINVAL
    );
    assert_clean(&fs);
}

/// Write-behind under concurrency: with a buffer of a few blocks and slow flights, four threads
/// write unaligned pieces into their own files while others read, truncate, fsync and list.
/// Each file ends as its writer's model says, before and after a remount, and checks clean.
#[test]
fn threads_writing_behind_each_other_lose_nothing() {
    let dev = new_dev(64 * MIB);
    let fs = std::sync::Arc::new(
        Filesystem::open_device(dev.clone(), &write_behind_opts(6, 1)).unwrap(),
    );
    let workers: Vec<_> = (0..4u8)
        .map(|t| {
            let fs = fs.clone();
            std::thread::spawn(move || {
                let c = root();
                let name = format!("w{t}");
                let (f, h) = fs
                    .create(ROOT_INO, name.as_bytes(), 0o644, rw(), &c)
                    .unwrap();
                let mut want = Vec::new();
                let mut seed = u64::from(t) * 7919 + 1;
                for i in 0..300usize {
                    seed = seed
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    let r = (seed >> 33) as usize;
                    let at = r % 200_000;
                    let len = 1 + (r / 7) % 9000;
                    match i % 50 {
                        // Now and then the others' operations: an fsync, a truncate, a read
                        // of the whole file.
                        17 => fs.fsync(f.ino, h, false).unwrap(),
                        29 => {
                            let size = (r % 150_000) as u64;
                            fs.setattr(
                                f.ino,
                                &SetAttr {
                                    size: Some(size),
                                    ..Default::default()
                                },
                                Some(h),
                                &c,
                            )
                            .unwrap();
                            want.resize(size as usize, 0);
                        }
                        41 => {
                            let got = fs.read(f.ino, h, 0, want.len() as u32 + 10).unwrap();
                            assert_eq!(got, want, "thread {t} step {i}");
                        }
                        _ => {
                            let data = pattern(len, (seed >> 20) as u8);
                            fs.write(f.ino, h, at as u64, &data, &c).unwrap();
                            if want.len() < at + len {
                                want.resize(at + len, 0);
                            }
                            want[at..at + len].copy_from_slice(&data);
                        }
                    }
                }
                fs.release(f.ino, h).unwrap();
                (f.ino, want)
            })
        })
        .collect();
    let files: Vec<(u64, Vec<u8>)> = workers.into_iter().map(|w| w.join().unwrap()).collect();
    for (ino, want) in &files {
        assert!(content(&fs, *ino) == *want, "inode {ino}");
    }
    assert_clean(&fs);
    let fs = std::sync::Arc::into_inner(fs).unwrap();
    fs.unmount().unwrap();
    let fs = Filesystem::open_device(dev, &opts()).unwrap();
    for (ino, want) in &files {
        assert!(content(&fs, *ino) == *want, "inode {ino} after a remount");
    }
    assert_clean(&fs);
}

/// A device whose writes panic once armed: a bug anywhere under a flight.
struct PanickingWrites {
    inner: std::sync::Arc<dyn store::BlockDevice>,
    armed: std::sync::atomic::AtomicBool,
}

impl store::BlockDevice for PanickingWrites {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> store::Result<()> {
        self.inner.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> store::Result<()> {
        assert!(
            !self.armed.load(std::sync::atomic::Ordering::SeqCst),
            "armed device written"
        );
        self.inner.write_at(buf, offset)
    }
    fn flush(&self) -> store::Result<()> {
        self.inner.flush()
    }
    fn size(&self) -> u64 {
        self.inner.size()
    }
}

/// A flight that panics stops the filesystem; it does not leave the next operations waiting
/// for a landing that never comes.
#[test]
fn a_panicking_flight_stops_the_filesystem_instead_of_hanging_it() {
    let dev = std::sync::Arc::new(PanickingWrites {
        inner: new_dev(64 * MIB),
        armed: std::sync::atomic::AtomicBool::new(false),
    });
    let fs = std::sync::Arc::new(
        Filesystem::open_device(dev.clone(), &write_behind_opts(8, 0)).unwrap(),
    );
    let c = root();
    let (f, h) = fs.create(ROOT_INO, b"f", 0o644, rw(), &c).unwrap();
    dev.armed.store(true, std::sync::atomic::Ordering::SeqCst);
    // Five blocks pass half the buffer: the write sends them on a flight, which panics.
    fs.write(f.ino, h, 0, &pattern(5 * 4096, 1), &c).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let fs2 = fs.clone();
    std::thread::spawn(move || {
        let _ = tx.send(fs2.fsync(f.ino, h, false));
    });
    let r = rx
        .recv_timeout(std::time::Duration::from_secs(20))
        .expect("fsync still waiting for the landing");
    assert!(matches!(r, Err(cowfs::Error::Stopped(_))), "{r:?}");
    dev.armed.store(false, std::sync::atomic::Ordering::SeqCst);
}

#[test]
fn aligned_copy_file_range_shares_extents() {
    let (dev, fs) = new_fs();
    let c = root();
    let data = pattern((1 << 20) + 1000, 6);
    let src = put(&fs, ROOT_INO, b"src", &data, &c);
    fs.sync().unwrap();
    let (dst, dh) = fs.create(ROOT_INO, b"dst", 0o644, rw(), &c).unwrap();
    let sh = fs.open(src, OpenFlags(libc::O_RDONLY), &c).unwrap();
    let free = fs.statfs().unwrap().bfree;
    let n = fs
        .copy_file_range(src, sh, 0, dst.ino, dh, 0, 4 << 20, &c)
        .unwrap();
    assert_eq!(n, data.len() as u64);
    assert_eq!(fs.statfs().unwrap().bfree, free, "no data copied");
    let ins = fs.inspect().unwrap();
    let ext = |ino| {
        ins.subvolumes[0]
            .inodes
            .iter()
            .find(|i| i.ino == ino)
            .unwrap()
            .extents
            .clone()
    };
    assert_eq!(ext(src)[0].extent, ext(dst.ino)[0].extent, "{ins}");
    fs.release(dst.ino, dh).unwrap();
    fs.release(src, sh).unwrap();
    // Changing the source leaves the copy alone.
    let h = fs.open(src, rw(), &c).unwrap();
    fs.write(src, h, 0, b"changed", &c).unwrap();
    fs.release(src, h).unwrap();
    assert_eq!(content(&fs, dst.ino), data);
    assert_clean(&fs);
    // Dropping the source keeps the shared extent for the copy.
    fs.unlink(ROOT_INO, b"src", &c).unwrap();
    fs.unmount().unwrap();
    let fs = Filesystem::open_device(dev, &opts()).unwrap();
    assert_eq!(content(&fs, dst.ino), data);
    assert_clean(&fs);
}

#[test]
fn full_metadata_gives_enospc_and_deletes_still_work() {
    let dev = new_dev(16 * MIB);
    let fs = Filesystem::open_device(dev, &opts()).unwrap();
    let c = root();
    let value = vec![3u8; 3000];
    let mut made = 0;
    let err = loop {
        let name = format!("file-{made}").into_bytes();
        match fs.mknod(ROOT_INO, &name, libc::S_IFREG | 0o644, 0, &c) {
            Ok(a) => match fs.setxattr(a.ino, b"user.v", &value, 0, &c) {
                Ok(()) => made += 1,
                Err(e) => break e,
            },
            Err(e) => break e,
        }
        assert!(made < 100_000, "never ran out");
    };
    assert_eq!(err.errno(), libc::ENOSPC, "{err}");
    assert!(made > 100);
    fs.sync().unwrap();
    for i in 0..made {
        fs.unlink(ROOT_INO, format!("file-{i}").as_bytes(), &c)
            .unwrap();
        if i % 50 == 0 {
            fs.sync().unwrap();
        }
    }
    fs.sync().unwrap();
    put(&fs, ROOT_INO, b"room again", b"yes", &c);
    assert_clean(&fs);
}

#[test]
fn device_errors_stop_changes_and_keep_the_last_commit() {
    use store::crash::FaultyDevice;
    let base = new_dev(32 * MIB);
    let mut image = vec![0u8; base.size() as usize];
    base.read_at(&mut image, 0).unwrap();
    let faulty = std::sync::Arc::new(FaultyDevice::new(store::MemDevice::from_bytes(image)));
    let fs = Filesystem::open_device(faulty.clone(), &opts()).unwrap();
    let c = root();
    let kept = put(&fs, ROOT_INO, b"kept", b"committed", &c);
    fs.sync().unwrap();
    faulty.fail_after(0);
    let (f, fh) = fs.create(ROOT_INO, b"lost", 0o644, rw(), &c).unwrap();
    fs.write(f.ino, fh, 0, &pattern(10_000, 1), &c).unwrap();
    assert_eq!(errno(fs.fsync(f.ino, fh, false)), libc::EIO);
    // Nothing more is accepted; reads still work.
    assert_eq!(errno(fs.mkdir(ROOT_INO, b"d", 0o755, &c)), libc::EIO);
    assert_eq!(errno(fs.sync()), libc::EIO);
    assert_eq!(content(&fs, kept), b"committed");
    drop(fs);
    faulty.heal();
    let fs = Filesystem::open_device(faulty, &opts()).unwrap();
    assert_eq!(content(&fs, kept), b"committed");
    assert_eq!(errno(fs.lookup(ROOT_INO, b"lost", &c)), libc::ENOENT);
    assert_clean(&fs);
}

/// An unaligned range (same place inside a block on both sides) shares its whole middle
/// blocks and copies its edges; bytes outside the range never appear in the destination.
#[test]
fn unaligned_copy_file_range_shares_the_middle_and_copies_the_edges() {
    let (_dev, fs) = new_fs();
    let c = root();
    let data = pattern(10 * 4096, 7);
    let src = put(&fs, ROOT_INO, b"src", &data, &c);
    let old = pattern(12 * 4096, 8);
    let dst = put(&fs, ROOT_INO, b"dst", &old, &c);
    fs.sync().unwrap();
    let sh = fs.open(src, OpenFlags(libc::O_RDONLY), &c).unwrap();
    let dh = fs.open(dst, rw(), &c).unwrap();
    let free = fs.statfs().unwrap().bfree;
    let (off_in, off_out, len) = (4096 + 100, 2 * 4096 + 100, 5 * 4096 + 300);
    let n = fs
        .copy_file_range(src, sh, off_in, dst, dh, off_out, len, &c)
        .unwrap();
    assert_eq!(n, len);
    fs.sync().unwrap();
    // Four whole middle blocks shared; the two edge blocks written anew.
    let used = free - fs.statfs().unwrap().bfree;
    assert!(
        used <= 2 * 4096 / u64::from(fs.statfs().unwrap().frsize) + 1,
        "{used} blocks used"
    );
    let mut want = old.clone();
    want[off_out as usize..(off_out + len) as usize]
        .copy_from_slice(&data[off_in as usize..(off_in + len) as usize]);
    assert_eq!(content(&fs, dst), want);
    let ins = fs.inspect().unwrap();
    let extents = |ino| {
        ins.subvolumes[0]
            .inodes
            .iter()
            .find(|i| i.ino == ino)
            .unwrap()
            .extents
            .iter()
            .map(|e| e.extent)
            .collect::<Vec<_>>()
    };
    let shared = extents(dst)
        .iter()
        .filter(|e| extents(src).contains(e))
        .count();
    assert!(shared > 0, "nothing shared: {ins}");
    fs.release(src, sh).unwrap();
    fs.release(dst, dh).unwrap();
    assert_clean(&fs);
}

/// A short copy whose end is not block aligned, into an empty file, then the destination
/// grows: the bytes after the copied range read as zeros, never as the source's data.
#[test]
fn short_unaligned_copy_file_range_leaks_nothing_when_the_destination_grows() {
    let (_dev, fs) = new_fs();
    let c = root();
    let src = put(&fs, ROOT_INO, b"src", &[0x53; 8192], &c);
    fs.sync().unwrap();
    let (dst, dh) = fs.create(ROOT_INO, b"dst", 0o644, rw(), &c).unwrap();
    let sh = fs.open(src, OpenFlags(libc::O_RDONLY), &c).unwrap();
    assert_eq!(
        fs.copy_file_range(src, sh, 0, dst.ino, dh, 0, 93, &c)
            .unwrap(),
        93
    );
    let set = cowfs::SetAttr {
        size: Some(4096),
        ..Default::default()
    };
    fs.setattr(dst.ino, &set, Some(dh), &c).unwrap();
    let got = content(&fs, dst.ino);
    assert_eq!(&got[..93], &[0x53; 93][..]);
    assert!(got[93..].iter().all(|&b| b == 0), "source bytes leaked");
    fs.release(src, sh).unwrap();
    fs.release(dst.ino, dh).unwrap();
    assert_clean(&fs);
}

/// SEEK_DATA answering ENXIO right after a buffered write (which the seek flushes) is an
/// ordinary answer: the filesystem keeps taking changes and the write is kept.
#[test]
fn seek_data_enxio_after_a_buffered_write_changes_nothing_else() {
    let (dev, fs) = new_fs();
    let c = root();
    let (f, fh) = fs.create(ROOT_INO, b"f", 0o644, rw(), &c).unwrap();
    fs.write(f.ino, fh, 0, b"pending", &c).unwrap();
    let set = cowfs::SetAttr {
        size: Some(1 << 20),
        ..Default::default()
    };
    fs.setattr(f.ino, &set, Some(fh), &c).unwrap();
    fs.write(f.ino, fh, 7, b" data", &c).unwrap();
    assert_eq!(
        errno(fs.lseek(f.ino, fh, 8192, cowfs::Whence::Data)),
        libc::ENXIO
    );
    fs.write(f.ino, fh, 12, b"!", &c).unwrap();
    fs.release(f.ino, fh).unwrap();
    fs.unmount().unwrap();
    let fs = Filesystem::open_device(dev, &opts()).unwrap();
    assert_eq!(&content(&fs, f.ino)[..13], b"pending data!");
    assert_clean(&fs);
}
